"""The offline verifier on real simulator grasps: the scripted expert lifts an object, the wrist
camera renders the hand, and the verifier must say "held"; the same object then put down on the
table 15 cm away must give "not held" from the same hand pose.

The shaded sides of dark and saturated objects (navy, dark green, magenta) are what the old
nearest-palette rule missed. The hue tolerance and the palm region came from logged benchmark
runs (seeds 100000-100049; see planner/server/held.py); these 12 scenes (seeds 600-603 of three
splits) then showed one more case, a yellow object put down on a yellow table, which led to
leaving table-coloured pixels out.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from planner.prompts import ImagePart, verify_grasp  # noqa: E402
from planner.server.held import held_object_fraction, palm_colour_fraction  # noqa: E402
from planner.server.tasks import TaskRequest, answer  # noqa: E402
from planner.types import BBox  # noqa: E402
from sim import GraspEnv, SimConfig  # noqa: E402
from tests.held_scenes import held_then_put_down  # noqa: E402

pytestmark = pytest.mark.timeout(600)
CASES = [(split, seed) for split in ("train", "unseen_objects", "unseen_lighting") for seed in range(600, 604)]


def _verify(instruction: str, head: np.ndarray, wrist: np.ndarray, box: list[int]) -> dict:
    prompt = verify_grasp(instruction, head, wrist, BBox(*box))
    text = "\n".join(p for p in prompt.parts if not isinstance(p, ImagePart))
    return json.loads(answer(TaskRequest("verify_grasp", text, [head, wrist])))


def test_verifier_on_lifted_and_put_down_objects():
    """Lifted objects are seen as held and put-down ones as not held: 11 of the 12 cases here.
    The miss (unseen lighting, seed 600) is a white object under tinted light, which the
    colour-free blob rule sees at 2.3 % of the view, under its 2.5 % threshold."""
    checked, wrong = 0, []
    with GraspEnv(SimConfig(n_objects=(4, 6), render_observations=False)) as env:
        for split, seed in CASES:
            got = held_then_put_down(env, split, seed)
            if got is None:
                continue
            instruction = f"Grasp the {got.colour} {got.shape}."
            yes = _verify(instruction, got.held["head_bgr"], got.held["wrist_bgr"], got.box)
            no = _verify(instruction, got.down["head_bgr"], got.down["wrist_bgr"], got.box)
            checked += 1
            if not yes["success"] or no["success"]:
                wrong.append((split, seed, got.colour, yes["reasoning"], no["reasoning"]))
    assert checked >= 10, f"the expert lifted only {checked} objects"
    assert len(wrong) <= 1, wrong
    assert all(colour in ("white", "grey", "black") for _, _, colour, *_ in wrong), wrong


def test_shaded_colour_at_the_palm_counts_and_a_table_object_does_not():
    """Synthetic wrist view: a navy-shaded blue block under the palm is blue; the same block low
    in the view (on the table) is not at the palm."""
    img = np.full((480, 640, 3), 150, np.uint8)                 # grey table
    img[:60] = 20                                               # dark palm at the top
    img[40:200, 260:380] = (110, 25, 15)                        # BGR: dark, saturated blue (shaded side)
    assert palm_colour_fraction(img, "blue") > 0.05
    low = np.full((480, 640, 3), 150, np.uint8)
    low[:60] = 20
    low[300:380, 280:360] = (110, 25, 15)
    assert palm_colour_fraction(low, "blue") == 0.0
    assert palm_colour_fraction(img, "red") == 0.0
    with pytest.raises(ValueError, match="unknown colour 'teal'"):
        palm_colour_fraction(img, "teal")


def test_shaded_face_of_a_white_object_between_the_fingers_counts():
    """Synthetic wrist view with the Lab values logged for a white cylinder held over a light
    table (train seed 100000): its faces are L 57-65, darker than the table (L 77) and barely
    tinted, so neither "brighter" nor "differently coloured" caught them. A shaded face is now
    counted when it is clearly darker than the table and far lighter than the black hand; the
    hand's own grey shading (L ~30) still is not."""
    def bgr(L: float) -> tuple[int, int, int]:
        lab = np.array([[[L, 0.0, 0.0]]], np.float32)
        return tuple(int(v) for v in np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2BGR)[0, 0] * 255, 0, 255))

    table_lab = np.array([77.0, 0.0, 0.0])
    img = np.zeros((480, 640, 3), np.uint8)
    img[:] = bgr(77.0)                                          # light table
    img[:60] = bgr(8.0)                                         # the black palm at the top
    img[40:200, 260:380] = bgr(60.0)                            # the held object's shaded face
    assert held_object_fraction(img, table_lab) > 0.05
    hand = img.copy()
    hand[40:200, 260:380] = bgr(30.0)                           # a shaded finger instead
    assert held_object_fraction(hand, table_lab) == 0.0
    empty = img.copy()
    empty[40:200, 260:380] = bgr(77.0)                          # nothing between the fingers
    assert held_object_fraction(empty, table_lab) == 0.0
