"""The offline server's classical vision on synthetic scenes (and on the simulator when available)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from planner.server.segmentation import analyse_scene
from planner.server.choice import choose_next, describe, locate
from planner.server.vocab import parse_text
from planner.synthetic import make_scene
from planner.types import BBox

pytestmark = pytest.mark.timeout(120)


def _propose_and_locate(image):
    scene = analyse_scene(image)
    chosen = choose_next(scene, scene.objects)
    instruction = describe(chosen, scene)
    found = locate(analyse_scene(image), parse_text(instruction))
    return chosen, instruction, BBox(*found.bbox)


def test_segmentation_recall_on_synthetic_scenes():
    hits = total = 0
    for seed in range(100, 108):
        scene = make_scene(seed)
        boxes = [BBox(*o.bbox) for o in analyse_scene(scene.image).objects]
        for obj in scene.objects:
            total += 1
            hits += max((BBox(*obj["bbox_head"]).iou(b) for b in boxes), default=0) >= 0.5
    assert hits / total >= 0.9


def test_proposed_box_hits_a_real_object_on_synthetic_scenes():
    hit = rightmost = 0
    for seed in range(200, 210):
        scene = make_scene(seed)
        _, _, box = _propose_and_locate(scene.image)
        ious = [box.iou(BBox(*o["bbox_head"])) for o in scene.objects]
        gt = max(range(len(ious)), key=lambda i: sum(scene.objects[i]["bbox_head"][0::2]))
        hit += max(ious) >= 0.5
        rightmost += ious[gt] >= 0.5
    assert hit >= 8 and rightmost >= 7


def test_arm_is_not_an_object():
    scene = make_scene(7, n_objects=3)
    analysis = analyse_scene(scene.image)
    assert all(not (o.mask & scene.arm_mask).sum() > 0.5 * o.area for o in analysis.objects)


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "planner.server", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "--host" in out.stdout and "127.0.0.1" in out.stdout


def test_simulator_scenes_if_available():
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from sim import GraspEnv, SimConfig
    except Exception as exc:  # the simulator is optional for these tests
        pytest.skip(f"sim not importable: {exc}")
    ok = n = 0
    env = GraspEnv(SimConfig())
    try:
        for seed in range(3):
            try:
                obs, info = env.reset(seed=seed, split="train")
            except Exception:
                continue
            n += 1
            image = obs["rgbm"][..., :3].copy()
            _, _, box = _propose_and_locate(image)
            ok += max(box.iou(BBox(*o["bbox_head"])) for o in info["objects"]) >= 0.5
    finally:
        env.close()
    if n == 0:
        pytest.skip("simulator could not reset")
    assert ok >= n - 1


def _table_image(seed: int = 0):
    """A 480x640 table with a radial-spot texture (like MuJoCo's 'gradient' builtin) under a
    lighting ramp; returns the BGR image."""
    import numpy as np
    rng = np.random.default_rng(seed)
    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dark, bright = np.array([40, 70, 20], np.float32), np.array([70, 140, 40], np.float32)  # BGR greens
    spot = np.zeros((h, w), np.float32)
    for cy in range(40, h, 120):
        for cx in range(40, w, 140):
            cx2, cy2 = cx + rng.uniform(-10, 10), cy + rng.uniform(-10, 10)
            spot = np.maximum(spot, np.exp(-((xx - cx2) ** 2 + (yy - cy2) ** 2) / (2 * 35.0 ** 2)))
    ramp = 0.85 + 0.3 * (yy / h)
    img = (dark[None, None] + (bright - dark)[None, None] * spot[..., None]) * ramp[..., None]
    return np.clip(img, 0, 255).astype(np.uint8), spot


def test_textured_table_blotch_does_not_inflate_the_box():
    """An object touching a bright texture spot is boxed tightly (the spot is table, not object)."""
    import cv2
    import numpy as np
    img, spot = _table_image()
    cy, cx = np.unravel_index(np.argmax(spot[200:400, 200:500]), spot[200:400, 200:500].shape)
    cy, cx = cy + 200, cx + 200
    x1, y1 = cx + 20, cy - 20                     # a yellow block just right of the spot centre
    cv2.rectangle(img, (x1, y1), (x1 + 40, y1 + 30), (0, 220, 240), -1)
    objects = analyse_scene(img).objects
    truth = BBox(x1, y1, x1 + 41, y1 + 31)
    best = max((BBox(*o.bbox).iou(truth) for o in objects), default=0.0)
    assert best >= 0.8, [o.bbox for o in objects]


def test_touching_objects_of_one_colour_are_two_objects():
    """Two red discs that touch form one blob; the watershed split boxes each of them."""
    import cv2
    import numpy as np
    img = np.full((480, 640, 3), (150, 160, 170), np.uint8)
    cv2.circle(img, (300, 260), 30, (30, 30, 200), -1)
    cv2.circle(img, (356, 268), 28, (30, 30, 200), -1)
    boxes = [BBox(*o.bbox) for o in analyse_scene(img).objects]
    for truth in (BBox(270, 230, 331, 291), BBox(328, 240, 385, 297)):
        assert max((b.iou(truth) for b in boxes), default=0.0) >= 0.6, boxes


def test_dumbbell_is_one_object():
    """Two balls joined by a thick bar (the unseen split's dumbbells) are one object, not three."""
    import cv2
    import numpy as np
    img = np.full((480, 640, 3), (150, 160, 170), np.uint8)
    cv2.line(img, (300, 260), (380, 260), (200, 200, 40), 25)  # bar: half-width 12 px
    cv2.circle(img, (300, 260), 26, (200, 200, 40), -1)
    cv2.circle(img, (380, 260), 26, (200, 200, 40), -1)
    objects = analyse_scene(img).objects
    assert len(objects) == 1, [o.bbox for o in objects]
    assert BBox(*objects[0].bbox).iou(BBox(274, 234, 407, 287)) >= 0.85, objects[0].bbox


def test_single_objects_are_not_over_split():
    """Convex objects (balls, blocks, capsules) stay whole."""
    import cv2
    import numpy as np
    img = np.full((480, 640, 3), (150, 160, 170), np.uint8)
    cv2.circle(img, (200, 260), 30, (30, 30, 200), -1)
    cv2.rectangle(img, (320, 230), (380, 280), (200, 60, 30), -1)
    cv2.line(img, (420, 300), (500, 250), (30, 200, 200), 24)
    objects = analyse_scene(img).objects
    assert len(objects) == 3, [o.bbox for o in objects]


def test_touching_coloured_and_white_objects_are_two_objects():
    """A red block against a white block (a red cylinder under a white capsule in the simulator):
    one chromatic and one achromatic colour cluster meeting in a sharp step are two objects."""
    import cv2
    import numpy as np
    img = np.full((480, 640, 3), (150, 160, 170), np.uint8)
    cv2.rectangle(img, (280, 240), (329, 299), (30, 30, 200), -1)   # red, BGR
    cv2.rectangle(img, (330, 230), (389, 289), (245, 245, 245), -1)  # white, touching on the right
    boxes = [BBox(*o.bbox) for o in analyse_scene(img).objects]
    for truth in (BBox(280, 240, 330, 300), BBox(330, 230, 390, 290)):
        assert max((b.iou(truth) for b in boxes), default=0.0) >= 0.75, boxes


def test_white_object_under_tinted_light_stays_whole():
    """A white ball whose shaded half takes the light's blue tint changes colour smoothly across
    the ball: no sharp step, so it is not cut into a white and a blue object (without the
    sharpness test the colour rule alone would cut it, checked first)."""
    import numpy as np

    from planner.server.segmentation import SegmentationParams
    img = np.full((480, 640, 3), (150, 160, 170), np.uint8)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    inside = (xx - 320) ** 2 + (yy - 260) ** 2 <= 40 ** 2
    t = np.clip((xx - 300) / 30.0, 0.0, 1.0)[..., None]               # 0 -> 1 over 30 px
    white, tinted = np.array([250, 250, 250], np.float32), np.array([230, 150, 120], np.float32)
    ball = (1 - t) * white + t * tinted                               # BGR: white -> light blue
    img[inside] = ball[inside].astype(np.uint8)
    assert len(analyse_scene(img, SegmentationParams(split_edge_contrast=0.0)).objects) == 2
    objects = analyse_scene(img).objects
    assert len(objects) == 1, [o.bbox for o in objects]
    assert BBox(*objects[0].bbox).iou(BBox(280, 220, 361, 301)) >= 0.85, objects[0].bbox


def test_choose_next_prefers_the_rightmost_free_object():
    """Crowded objects (others within a ring around them) are skipped while a free one is left:
    in the simulator the planner's picks with crowding >= 0.1 were grasped far less often."""
    import numpy as np

    from planner.server.segmentation import DetectedObject, SceneAnalysis

    def obj(i, x, crowding):
        return DetectedObject(index=i, bbox=(x - 10, 200, x + 10, 220), area=400, centroid=(float(x), 210.0),
                              lab=(50.0, 40.0, 20.0), colour="red", shape="ball",
                              mask=np.zeros((480, 640), bool), crowding=crowding)

    empty = np.zeros((480, 640), bool)
    objects = [obj(0, 500, 0.15), obj(1, 400, 0.0), obj(2, 300, 0.02)]
    scene = SceneAnalysis(objects, empty, empty, empty)
    assert choose_next(scene, objects).index == 1       # the rightmost is hemmed in (0.15)
    assert choose_next(scene, objects, max_crowding=0.25).index == 0
    crowded = [obj(0, 500, 0.4), obj(1, 400, 0.3)]
    assert choose_next(scene, crowded).index == 0       # all hemmed in: the rightmost
    assert choose_next(scene, []) is None
