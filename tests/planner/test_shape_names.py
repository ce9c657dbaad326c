"""The offline planner names shapes the way they look and boxes the object it named (issue 24
point 3), on head images rendered by the simulator (fixed seeds 1000+, never used to choose the
shape rule's thresholds, which came from seeds 0-79; see ``planner/server/shapes.py``).

Ground truth is read here, in the test, from the simulator; the planner sees only the image.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from planner.server.segmentation import analyse_scene  # noqa: E402
from planner.server.shapes import POLY_ERR_CUBE, ShapeFeatures, classify_shape  # noqa: E402
from planner.server.choice import choose_next, graspable  # noqa: E402
from planner.server.tasks import TaskRequest, answer  # noqa: E402
from planner.server.vocab import SHAPE_OF_WORD, parse_text  # noqa: E402

pytestmark = pytest.mark.timeout(600)

#: Simulator shape -> the planner's shape family (vocab.SHAPE_WORDS) for the training shapes.
FAMILY = {"box": "cube", "sphere": "ball", "cylinder": "cylinder", "capsule": "cylinder", "ellipsoid": "cylinder"}
SCENES = [("train", s) for s in range(1000, 1016)] + [("unseen_lighting", s) for s in range(1000, 1006)] + \
         [("unseen_backgrounds", s) for s in range(1000, 1006)] + [("dense", s) for s in range(1000, 1008)]
#: measured on SCENES: 247/263 = 93.9 % of matched objects (the previous rule: 211/263 = 80.2 %, and it
#: called 11 of 41 boxes balls, now 1); the named objects: 35/36
MIN_SHAPE_ACCURACY = 0.90
MIN_NAMED_SHAPE_ACCURACY = 0.90


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


@pytest.fixture(scope="module")
def rendered():
    """[(split, seed, head BGR, head segmentation, sim object specs)] for :data:`SCENES`."""
    from sim.config import SimConfig
    from sim.env import GraspEnv
    out = []
    with GraspEnv(SimConfig()) as env:
        for split, seed in SCENES:
            env.reset(seed=seed, split=split)
            cams = env.render_cameras()
            out.append((split, seed, cams["head_bgr"], cams["head_seg"], list(env.scene.objects)))
    return out


def _gt_index(mask: np.ndarray, seg: np.ndarray) -> tuple[int, float]:
    """The simulator object a detected mask covers most, and the mask IoU."""
    ids, counts = np.unique(seg[mask], return_counts=True)
    keep = ids >= 0
    if not keep.any():
        return -1, 0.0
    best = int(ids[keep][np.argmax(counts[keep])])
    gt = seg == best
    return best, float((gt & mask).sum() / (gt | mask).sum())


def test_shape_words_match_ground_truth_shapes(rendered):
    right = total = 0
    confusion: dict[tuple[str, str], int] = {}
    for _, _, image, seg, objects in rendered:
        for det in analyse_scene(image).objects:
            idx, iou = _gt_index(det.mask, seg)
            if idx < 0 or iou < 0.5 or objects[idx].shape not in FAMILY:
                continue
            total += 1
            right += det.shape == FAMILY[objects[idx].shape]
            key = (objects[idx].shape, det.shape)
            confusion[key] = confusion.get(key, 0) + 1
    print(f"shape words right for {right}/{total} = {right / total:.1%} of matched objects; "
          f"confusion {sorted(confusion.items())}")
    assert total >= 250
    assert right / total >= MIN_SHAPE_ACCURACY
    boxes_as_balls = confusion.get(("box", "ball"), 0)
    assert boxes_as_balls <= 0.05 * sum(v for (g, _), v in confusion.items() if g == "box")


def test_planner_names_a_graspable_object_and_boxes_it(rendered):
    """propose_instruction -> predict_bbox, as the runtime calls them: the box covers the object
    the instruction named (IoU >= 0.5 with its ground-truth box) and the shape word is right."""
    shape_ok = named = box_ok = 0
    for split, seed, image, seg, objects in rendered:
        prompt = "Task: propose_instruction\nUser prompt: clear the table\n"
        proposal = json.loads(answer(TaskRequest("propose_instruction", prompt, [image, image])))
        instruction = proposal["instruction"]
        scene = analyse_scene(image)
        chosen = choose_next(scene, scene.objects)  # "clear the table": every object is a candidate
        assert chosen.label == proposal["target"]
        assert graspable(chosen, scene), (split, seed, instruction)
        idx, iou = _gt_index(chosen.mask, seg)
        assert idx >= 0 and iou >= 0.5, (split, seed, instruction)
        reply = json.loads(answer(TaskRequest("predict_bbox", f"Task: predict_bbox\nGrasping instruction: {instruction}\n",
                                              [image])))
        ys, xs = np.nonzero(seg == idx)
        gt_box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        box_iou = _iou(reply["bbox_2d"], gt_box)
        words = parse_text(instruction).shapes
        named += 1
        box_ok += box_iou >= 0.5
        if objects[idx].shape in FAMILY:
            shape_ok += words == [FAMILY[objects[idx].shape]]
        else:
            shape_ok += 1
        print(f"{split} {seed}: {instruction!r} -> {objects[idx].describe()} (box IoU {box_iou:.2f})")
    print(f"named shape right {shape_ok}/{named}, box IoU >= 0.5 {box_ok}/{named}")
    assert box_ok == named
    assert shape_ok / named >= MIN_NAMED_SHAPE_ACCURACY


def test_rule_on_hand_made_outlines():
    """Straight-edged outlines are cubes, round ones balls, elongated round ones cylinders."""
    assert classify_shape(ShapeFeatures(aspect=1.3, rect_fill=0.85, poly_err=POLY_ERR_CUBE / 2, area=900)) == "cube"
    assert classify_shape(ShapeFeatures(aspect=1.02, rect_fill=0.79, poly_err=0.14, area=900)) == "ball"
    assert classify_shape(ShapeFeatures(aspect=2.2, rect_fill=0.86, poly_err=0.10, area=900)) == "cylinder"
    assert {SHAPE_OF_WORD[w] for w in ("box", "ball", "capsule", "egg")} == {"cube", "ball", "cylinder"}
