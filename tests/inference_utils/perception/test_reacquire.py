"""Re-acquisition of a lost object by the flow tracker (and the Reacquirer on its own).

The scene is drawn here: a noisy table, the red target, an identical red distractor *closer* to
the target's start position than where the target ends up, and a blue object. A grey "hand"
covers the target, which is pushed away while covered; when the hand leaves, the target lies
130 px from where it was.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from inference_utils.perception import FlowTracker, mask_iou
from inference_utils.perception.reacquire import Reacquirer

H, W = 480, 640
RED, BLUE, GREY = (30, 30, 200), (200, 60, 30), (120, 120, 120)
START, PUSHED, DISTRACTOR = (200, 240), (300, 330), (265, 185)


def _disc(centre, r=22):
    m = np.zeros((H, W), np.uint8)
    cv2.circle(m, centre, r, 1, -1)
    return m > 0


def make_push_sequence(seed: int = 0, n_frames: int = 24):
    """Frames (BGR uint8) and target masks: still (0-5), hand over the target (6-9, the target
    moves while hidden), hand gone (10-), target at its new place."""
    rng = np.random.default_rng(seed)
    table = np.empty((H, W, 3), np.uint8)
    table[:] = (150, 180, 200)
    frames, masks = [], []
    for t in range(n_frames):
        img = table.astype(np.int16) + rng.normal(0, 4, (H, W, 3)).astype(np.int16)
        img = np.clip(img, 0, 255).astype(np.uint8)
        target = _disc(START if t < 8 else PUSHED)
        img[_disc(DISTRACTOR)] = RED
        img[_disc((420, 120), 25)] = BLUE
        img[target] = RED
        visible = target.copy()
        if 6 <= t < 10:  # the hand covers the target's start place (and the target while there)
            hand = np.zeros((H, W), bool)
            hand[START[1] - 45:START[1] + 45, START[0] - 45:START[0] + 45] = True
            img[hand] = GREY
            visible &= ~hand
        frames.append(img)
        masks.append(visible)
    return frames, masks


@pytest.mark.parametrize("seed", [0, 1])
def test_flow_tracker_reacquires_a_pushed_object(seed):
    frames, masks = make_push_sequence(seed)
    distractor = _disc(DISTRACTOR)
    results = {}
    for reacquire in (True, False):
        tr = FlowTracker(reacquire=reacquire)
        tr.start(frames[0], masks[0])
        outs = [tr.track(f) for f in frames[1:]]
        results[reacquire] = (tr, outs)
        assert all(mask_iou(o, distractor, empty_value=0.0) < 0.05 for o in outs)  # never the look-alike
    tr, outs = results[True]
    late = [mask_iou(o, m) for o, m in zip(outs[12:], masks[13:])]
    assert tr.reacquired_at and min(late) >= 0.8, (tr.reacquired_at, late)
    # without re-acquisition the same sequence loses the object for good
    _, lost = results[False]
    assert max(mask_iou(o, m) for o, m in zip(lost[12:], masks[13:])) < 0.3


def test_reacquirer_ignores_unmoved_lookalikes():
    frames, masks = make_push_sequence(0)
    r = Reacquirer()
    r.start(frames[0], masks[0])
    # the target vanished entirely (hand still over its place, not yet anywhere else)
    gone = frames[7].copy()
    gone[_disc(PUSHED)] = frames[0][_disc(PUSHED)]
    assert r.find(gone, masks[0]) is None
    found = r.find(frames[12], masks[0])
    assert found is not None and mask_iou(found, masks[12]) >= 0.8
    # without the "must have moved" rule the nearer look-alike would win
    naive = Reacquirer(min_changed=0.0)
    naive.start(frames[0], masks[0])
    assert mask_iou(naive.find(frames[12], masks[0]), _disc(DISTRACTOR)) >= 0.8


def test_reacquirer_contract():
    with pytest.raises(RuntimeError, match="before start"):
        Reacquirer().find(np.zeros((H, W, 3), np.uint8), np.ones((H, W), bool))
    with pytest.raises(ValueError, match="area_range"):
        Reacquirer(area_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="lost_frac"):
        FlowTracker(lost_frac=0.0)
