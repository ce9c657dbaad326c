"""Cutie tracker: runs only when Cutie and its weights are installed locally."""
from __future__ import annotations

import os

import numpy as np
import pytest

from inference_utils.perception import mask_iou
from inference_utils.perception.cutie_tracker import default_cutie_weights


def test_real_cutie_on_synthetic(grasp_sequence):
    pytest.importorskip("cutie", reason="Cutie not installed (from source: github.com/hkchengrex/Cutie)")
    weights = os.environ.get("DEXGRASPVLA_CUTIE_WEIGHTS", default_cutie_weights())
    if not os.path.isfile(weights):
        pytest.skip(f"Cutie weights not found at {weights} (set DEXGRASPVLA_CUTIE_WEIGHTS)")
    from inference_utils.perception import CutieTracker

    seq = grasp_sequence(0, n_frames=30)
    tr = CutieTracker(weights, device="cpu")
    tr.start(seq.frames[0], seq.masks[0])
    ious = [mask_iou(tr.track(f), g) for f, g in zip(seq.frames[1:], seq.masks[1:])]
    assert np.mean(ious) >= 0.7


def test_default_weights_location_is_torch_hub():
    assert default_cutie_weights().endswith(os.path.join("weights", "cutie-base-mega.pth"))
