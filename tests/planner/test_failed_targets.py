"""The planner turns away from objects that failed (issue 24, long prompts): the prompt lists them,
the offline planner reads the list and proposes another object while the user prompt allows one,
and returns to a failed object only when nothing else is left (fewest failures first).

Scenes are the project's synthetic table images (planner.synthetic); the HTTP round trip of an avoid
list (client -> OpenAI chat API -> offline server) is tested in ``test_planner_client_server.py``.
"""
from __future__ import annotations

import json

import pytest

from planner.prompts import ImagePart, failed_targets_text, propose_instruction
from planner.server.segmentation import analyse_scene
from planner.server.choice import choose_next, failures_of, locate
from planner.server.tasks import TaskRequest, answer
from planner.server.vocab import parse_text
from planner.synthetic import make_scene
from planner.types import BBox, FailedTarget

pytestmark = pytest.mark.timeout(120)


def _ask(image, avoid=(), user_prompt="clear the table"):
    prompt = propose_instruction(user_prompt, image, image, avoid)
    text = "\n".join(p for p in prompt.parts if not isinstance(p, ImagePart))
    reply = json.loads(answer(TaskRequest("propose_instruction", text, [image, image])))
    scene = analyse_scene(image)
    return reply, locate(scene, parse_text(reply["instruction"])), scene, text


def _failed(obj, n=1):
    return FailedTarget(obj.label, BBox(*obj.bbox), n)


def test_prompt_lists_the_failed_objects():
    assert failed_targets_text(()) == ""
    text = failed_targets_text([FailedTarget("red ball", BBox(10, 20, 40, 50), 2)])
    assert "- avoid: red ball at box [10, 20, 40, 50], failed 2 time(s)" in text
    assert "only when no other is left" in text


def test_failed_object_is_skipped_while_another_is_left():
    checked = 0
    for seed in range(200, 207):
        image = make_scene(seed).image
        first_reply, first, scene, _ = _ask(image)
        if first is None or len(scene.objects) < 2:
            continue
        reply, second, _, text = _ask(image, [_failed(first)])
        assert "avoid:" in text
        assert second is not None and second.index != first.index, (seed, first_reply, reply)
        assert "failed before" in reply["reasoning"]
        # both failed once -> a third object if there is one; all failed -> the fewest failures
        if len(scene.objects) >= 3:
            _, third, _, _ = _ask(image, [_failed(first), _failed(second)])
            assert third.index not in (first.index, second.index), seed
        avoid = [_failed(o, 2) for o in scene.objects if o.index != second.index] + [_failed(second, 1)]
        _, again, _, _ = _ask(image, avoid)
        assert again.index == second.index, seed
        checked += 1
    assert checked >= 5


def test_a_nudged_object_is_still_recognised():
    """A missed grasp pushes the object: the failed box, shifted by half its width, still matches."""
    image = make_scene(203).image
    scene = analyse_scene(image)
    obj = next(o for o in scene.objects if sum(p.colour == o.colour for p in scene.objects) == 1)
    x1, y1, x2, y2 = obj.bbox
    dx = (x2 - x1) // 2
    text = failed_targets_text([FailedTarget(obj.label, BBox(x1 + dx, y1, x2 + dx, y2), 1)])
    assert failures_of(scene, text) == {obj.index: 1}
    # the only object of its colour is the failed one wherever it now lies (lifted and dropped)
    far = failed_targets_text([FailedTarget(obj.label, BBox(0, 0, x2 - x1, y2 - y1), 1)])
    assert failures_of(scene, far) == {obj.index: 1}
    # a colour absent from the scene marks nothing
    absent = next(c for c in ("purple", "pink", "brown", "white", "black") if all(o.colour != c for o in scene.objects))
    assert failures_of(scene, failed_targets_text([FailedTarget(f"{absent} ball", BBox(0, 0, 5, 5), 3)])) == {}
    # two of one colour: the one near the failed box, not the other
    twins = [o for o in scene.objects if o.colour == "yellow"]
    assert len(twins) == 2
    t = twins[0]
    assert failures_of(scene, failed_targets_text([FailedTarget(t.label, BBox(*t.bbox), 2)])) == {t.index: 2}


def test_single_target_prompt_retries_the_same_object():
    """'grasp the <it>' leaves one candidate: it is proposed again despite its failure."""
    for seed in range(200, 206):
        image = make_scene(seed).image
        scene = analyse_scene(image)
        obj = choose_next(scene, scene.objects)
        same = [o for o in scene.objects if o.colour == obj.colour and o.shape == obj.shape]
        if len(same) != 1:
            continue
        reply, again, _, _ = _ask(image, [_failed(obj, 3)], user_prompt=f"grasp the {obj.label}")
        assert again is not None and again.index == obj.index, (seed, reply)
        return
    pytest.fail("no scene with a unique object among seeds 200-205")
