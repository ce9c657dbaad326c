"""Unit tests of reply parsing and text understanding."""

from __future__ import annotations

import pytest

from planner.parsing import ReplyParseError, extract_object, parse_box, parse_verdict
from planner.server.vocab import parse_text
from planner.types import BBoxFormat


def test_extract_fenced_bare_and_broken_json():
    assert extract_object('```json\n{"a": 1}\n```')["a"] == 1
    assert extract_object('Sure! {"a": 2} hope it helps')["a"] == 2
    assert extract_object("{'a': 3, b: 'x',}")["b"] == "x"
    assert extract_object('[{"bbox_2d": [1, 2, 3, 4], "label": "x"}]', required=("bbox_2d",))["label"] == "x"
    with pytest.raises(ReplyParseError):
        extract_object("no json at all")
    with pytest.raises(ReplyParseError, match="lacks"):
        extract_object('{"label": "x"}', required=("bbox_2d",))


def test_verdicts_are_explicit():
    assert parse_verdict('{"reasoning": "it is not true", "success": false}', "success")[0] is False
    assert parse_verdict('{"done": "True"}', "done")[0] is True
    assert parse_verdict("reasoning...\nFinal verdict: no", "done")[0] is False
    with pytest.raises(ReplyParseError):
        parse_verdict("It is true that the object was lifted", "success")
    with pytest.raises(ReplyParseError):
        parse_verdict('{"success": "maybe"}', "success")


def test_boxes():
    box, raw = parse_box([10, 20, 110, 220], BBoxFormat.ABSOLUTE, 640, 480)
    assert box.as_list() == [10, 20, 110, 220] and raw == (10, 20, 110, 220)
    box, _ = parse_box([500, 500, 1000, 1000], BBoxFormat.NORMALIZED_1000, 640, 480)
    assert box.as_list() == [320, 240, 640, 480]
    assert parse_box([-5, 0, 650, 100], BBoxFormat.ABSOLUTE, 640, 480)[0].as_list() == [0, 0, 640, 100]
    for bad in ([10, 10, 10, 50], [50, 10, 10, 50], [900, 700, 1200, 900], [1, 2, 3], ["a", 1, 2, 3], None,
                [700, 10, 720, 20]):
        with pytest.raises(ReplyParseError):
            parse_box(bad, BBoxFormat.ABSOLUTE, 640, 480)


def test_parse_text():
    p = parse_text("Grasp the second red cube from the right, in the middle of the table.")
    assert p.colours == ["red"] and p.shapes == ["cube"] and p.ordinal == 2 and p.ordinal_from == "right"
    p = parse_text("Grasp the green cylinder on the left side of the table, near the front.")
    assert p.horizontal == "left" and p.depth == "front"
    assert parse_text("clear the table").all_objects and not parse_text("clear the table").has_filter
    assert parse_text("pick up all gray balls").colours == ["grey"]


def test_held_out_shape_words_take_the_family_their_outline_reads_as():
    """Frustums and triangular prisms outline as blocks, hexagonal prisms and dumbbells as
    cylinders (shapes.py); the prompt's word is looked for in that family."""
    assert parse_text("grasp the third pink tri prism from the left").shapes == ["cube"]
    assert parse_text("grasp the magenta frustum").shapes == ["cube"]
    assert parse_text("grasp the grey hex prism").shapes == ["cylinder"]
    assert parse_text("grasp the navy dumbbell").shapes == ["cylinder"]
    assert parse_text("put the triangular prisms away").plural
