"""GrabCut segmenter on synthetic table-top images."""
from __future__ import annotations

import numpy as np
import pytest

from inference_utils.perception import GrabCutSegmenter, Segmenter, mask_iou


@pytest.fixture(scope="module")
def seg():
    return GrabCutSegmenter()


def test_is_a_segmenter(seg):
    assert isinstance(seg, Segmenter)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_loose_box_every_object(seg, grasp_sequence, loose_box, seed):
    seq = grasp_sequence(seed, n_frames=1)
    image, labels = seq.frames[0], seq.meta["labels0"]
    ious = []
    for i, box in enumerate(seq.object_boxes):
        mask = seg.segment(image, loose_box(box, seed * 10 + i))
        assert mask.dtype == np.bool_ and mask.shape == image.shape[:2]
        ious.append(mask_iou(mask, labels == i + 1))
    assert min(ious) >= 0.8, ious
    assert np.mean(ious) >= 0.9, ious


def test_tight_and_very_loose_boxes(seg, grasp_sequence, loose_box):
    seq = grasp_sequence(4, n_frames=1)
    gt = seq.masks[0]
    assert mask_iou(seg.segment(seq.frames[0], seq.target_box), gt) >= 0.85
    assert mask_iou(seg.segment(seq.frames[0], loose_box(seq.target_box, 1, 0.3, 0.4)), gt) >= 0.8


def test_box_partly_outside_image_is_clipped(seg):
    img = np.full((120, 160, 3), 90, np.uint8)
    img[10:60, 120:160] = (20, 30, 220)
    mask = seg.segment(img, (110, 0, 400, 70))
    assert mask_iou(mask, (np.arange(120)[:, None] < 60) & (np.arange(120)[:, None] >= 10)
                    & (np.arange(160)[None] >= 120)) >= 0.8


def test_bad_inputs(seg):
    img = np.zeros((50, 60, 3), np.uint8)
    with pytest.raises(ValueError, match="outside"):
        seg.segment(img, (100, 100, 200, 200))
    with pytest.raises(ValueError, match="4 finite numbers"):
        seg.segment(img, (1, 2, 3))
    with pytest.raises(ValueError, match="uint8"):
        seg.segment(img.astype(np.float32), (0, 0, 10, 10))
    with pytest.raises(ValueError, match="BGR"):
        seg.segment(img[..., 0], (0, 0, 10, 10))
