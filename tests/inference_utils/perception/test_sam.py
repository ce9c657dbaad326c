"""SAM segmenter: logic checked against a stand-in module; the real model only when available."""
from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest

from inference_utils.perception import SamSegmenter, mask_iou


class _FakeModel:
    def to(self, device):
        self.device = device
        return self

    def eval(self):
        return self


class _FakePredictor:
    """Returns three candidate masks; the middle one (the box interior) has the best score."""

    instances: list = []

    def __init__(self, model):
        self.model, self.images, self.boxes = model, [], []
        _FakePredictor.instances.append(self)

    def set_image(self, image, image_format="RGB"):
        self.images.append((image.copy(), image_format))

    def predict(self, box, multimask_output=True):
        self.boxes.append(np.asarray(box))
        h, w = self.images[-1][0].shape[:2]
        x1, y1, x2, y2 = np.asarray(box).astype(int)
        good = np.zeros((h, w), bool)
        good[y1:y2, x1:x2] = True
        return np.stack([np.zeros((h, w), bool), good, np.ones((h, w), bool)]), np.array([0.2, 0.9, 0.5]), None


@pytest.fixture
def fake_sam(monkeypatch):
    mod = types.ModuleType("segment_anything")
    mod.sam_model_registry = {k: (lambda checkpoint=None: _FakeModel()) for k in ("vit_h", "vit_l", "vit_b")}
    mod.SamPredictor = _FakePredictor
    monkeypatch.setitem(sys.modules, "segment_anything", mod)
    _FakePredictor.instances.clear()
    return mod


def test_best_of_multimask_and_rgb_order(fake_sam, tmp_path):
    ckpt = tmp_path / "sam_vit_b_01ec64.pth"
    ckpt.write_bytes(b"fake")
    seg = SamSegmenter(str(ckpt), model_type="vit_b", device="cpu")
    img = np.zeros((40, 50, 3), np.uint8)
    img[..., 0] = 255  # pure blue in BGR
    mask = seg.segment(img, (10.2, 5, 30, 25))
    assert mask.dtype == np.bool_ and mask.shape == (40, 50)
    assert mask.sum() == 20 * 20  # the best-scoring candidate
    pred = _FakePredictor.instances[-1]
    rgb, fmt = pred.images[-1]
    assert fmt == "RGB" and rgb[0, 0, 2] == 255 and rgb[0, 0, 0] == 0
    seg.segment(img, (0, 0, 10, 10))
    assert len(pred.images) == 1  # image embedding reused for a second box on the same image


def test_real_sam_on_synthetic(grasp_sequence, loose_box):
    pytest.importorskip("segment_anything", reason="optional extra [sam] not installed")
    ckpt = os.environ.get("DEXGRASPVLA_SAM_CHECKPOINT")
    if not ckpt or not os.path.isfile(ckpt):
        pytest.skip("set DEXGRASPVLA_SAM_CHECKPOINT to a local SAM checkpoint to run this test")
    model_type = os.environ.get("DEXGRASPVLA_SAM_MODEL_TYPE", "vit_b")
    seg = SamSegmenter(ckpt, model_type=model_type, device="cpu")
    seq = grasp_sequence(0, n_frames=1)
    mask = seg.segment(seq.frames[0], loose_box(seq.target_box, 0))
    assert mask_iou(mask, seq.masks[0]) >= 0.8
