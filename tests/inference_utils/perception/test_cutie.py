"""Cutie tracker: loaded from a local clone (it is not on PyPI), random or released weights.

To run the Cutie tests::

    git clone https://github.com/hkchengrex/Cutie.git /somewhere/Cutie
    DEXGRASPVLA_CUTIE_PATH=/somewhere/Cutie pytest tests/inference_utils/perception/test_cutie.py

The plumbing test builds Cutie's network with random weights (nothing downloaded); the accuracy
test also needs the released ``cutie-base-mega.pth`` (``DEXGRASPVLA_CUTIE_WEIGHTS``).
"""
from __future__ import annotations

import importlib.util
import os

import cv2
import numpy as np
import pytest

from inference_utils.perception import CutieTracker, PerceptionDependencyError, build_tracker, mask_iou
from inference_utils.perception.cutie_tracker import default_cutie_weights

CLONE = os.environ.get("DEXGRASPVLA_CUTIE_PATH")
HOW = ("Cutie is not pip-installable: `git clone https://github.com/hkchengrex/Cutie.git` and set "
       "DEXGRASPVLA_CUTIE_PATH to the clone to run this test")


def _cutie_available() -> bool:
    return bool(CLONE) or importlib.util.find_spec("cutie") is not None


needs_cutie = pytest.mark.skipif(not _cutie_available(), reason=HOW)


@needs_cutie
def test_cutie_from_clone_random_weights(grasp_sequence, tmp_path, monkeypatch):
    import torch
    from hydra.core.global_hydra import GlobalHydra

    from inference_utils.perception.cutie_tracker import build_cutie_network, import_cutie, load_cutie_config

    hub = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(hub))  # any download would land here
    import_cutie(CLONE)
    hydra_before = GlobalHydra.instance().is_initialized()
    net = build_cutie_network(load_cutie_config("unused"), "cpu")
    weights = tmp_path / "cutie-random.pth"
    torch.save(net.state_dict(), weights)

    tracker = build_tracker({"tracker": {"backend": "cutie", "weights": str(weights), "code_path": CLONE,
                                         "device": "cpu", "max_internal_size": 240, "mem_every": 2}})
    assert isinstance(tracker, CutieTracker) and tracker._processor.mem_every == 2
    assert GlobalHydra.instance().is_initialized() == hydra_before
    loaded = tracker._net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())

    seq = grasp_sequence(0, n_frames=4)
    frames = [cv2.resize(f, (320, 240), interpolation=cv2.INTER_AREA) for f in seq.frames]
    first = cv2.resize(seq.masks[0].astype(np.uint8), (320, 240), interpolation=cv2.INTER_NEAREST) > 0
    with pytest.raises(RuntimeError, match="before start"):
        tracker.track(frames[0])
    tracker.start(frames[0], first)
    for f in frames[1:3]:
        mask = tracker.track(f)
        assert mask.dtype == np.bool_ and mask.shape == (240, 320)
    with pytest.raises(ValueError, match="differs from the start frame"):
        tracker.track(seq.frames[3])
    tracker.reset()
    assert not tracker.started
    assert not hub.exists() or not any(hub.rglob("*.pth"))  # no ImageNet ResNet was downloaded


@needs_cutie
def test_real_cutie_on_synthetic(grasp_sequence):
    weights = os.environ.get("DEXGRASPVLA_CUTIE_WEIGHTS", default_cutie_weights())
    if not os.path.isfile(weights):
        pytest.skip(f"accuracy with the released weights: put cutie-base-mega.pth at {weights} "
                    "or set DEXGRASPVLA_CUTIE_WEIGHTS")
    seq = grasp_sequence(0, n_frames=30)
    tr = CutieTracker(weights, device="cpu", code_path=CLONE)
    tr.start(seq.frames[0], seq.masks[0])
    ious = [mask_iou(tr.track(f), g) for f, g in zip(seq.frames[1:], seq.masks[1:])]
    assert np.mean(ious) >= 0.7


def test_code_path_that_is_not_a_clone(tmp_path):
    with pytest.raises(PerceptionDependencyError) as err:
        build_tracker({"tracker": {"backend": "cutie", "code_path": str(tmp_path), "weights": str(tmp_path / "w.pth")}})
    msg = str(err.value)
    assert "not a Cutie clone" in msg and "git clone https://github.com/hkchengrex/Cutie.git" in msg
    assert "w.pth" in msg  # the missing weights are reported in the same error


def test_default_weights_location_is_torch_hub():
    assert default_cutie_weights().endswith(os.path.join("weights", "cutie-base-mega.pth"))
