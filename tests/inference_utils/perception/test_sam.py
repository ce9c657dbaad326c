"""SAM segmenter on real ``segment_anything`` models with random weights (no download, no mocks).

The tiny model is ``segment_anything.build_sam._build_sam`` with a 2-block image encoder; the
checkpoint tests go through ``sam_model_registry["vit_b"]`` as real use does. Random weights make
the masks meaningless, so the tests compare our interface with the library's own predictor.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("segment_anything", reason="segment-anything not installed: `pip install -e .[test]` "
                    "(or `.[sam]`) installs it")
import torch  # noqa: E402
from segment_anything import SamPredictor, sam_model_registry  # noqa: E402

from inference_utils.perception import SamSegmenter, build_segmenter, mask_iou  # noqa: E402
from inference_utils.perception.base import clip_box  # noqa: E402
from inference_utils.perception.random_models import random_sam  # noqa: E402

BOX = (250.4, 230.0, 371.7, 352.2)


@pytest.fixture(scope="module")
def tiny_sam():
    return random_sam("tiny", seed=0)


@pytest.fixture(scope="module")
def frame(grasp_sequence):
    return grasp_sequence(0, n_frames=2).frames[0]  # 480x640 BGR


def test_box_to_mask_is_the_librarys_best_candidate(tiny_sam, frame):
    seg = SamSegmenter.from_model(tiny_sam, device="cpu")
    mask = seg.segment(frame, BOX)
    assert mask.dtype == np.bool_ and mask.shape == frame.shape[:2]

    pred = SamPredictor(tiny_sam)  # what the library itself returns for the same image and box

    def library(image):
        pred.set_image(np.ascontiguousarray(image), image_format="RGB")
        with torch.inference_mode():
            logits, scores, _ = pred.predict(box=np.asarray(clip_box(BOX, frame.shape), np.float32),
                                             multimask_output=True, return_logits=True)
        return logits, scores

    logits, scores = library(frame[..., ::-1])
    assert np.array_equal(mask, logits[int(np.argmax(scores))] > 0)
    bgr_logits, _ = library(frame)  # the comparison can tell colour orders apart
    assert np.abs(bgr_logits - logits).max() > 1e-3

    features = seg._predictor.features
    seg.multimask = False  # second box, single mask, same image: no new embedding
    single = seg.segment(frame, (10, 10, 200, 150))
    assert single.shape == frame.shape[:2] and single.dtype == np.bool_
    assert seg._predictor.features is features
    seg.segment(np.ascontiguousarray(frame[::-1]), BOX)
    assert seg._predictor.features is not features


def test_box_outside_image_rejected(tiny_sam, frame):
    with pytest.raises(ValueError, match="outside"):
        SamSegmenter.from_model(tiny_sam).segment(frame, (700, 500, 800, 600))
    with pytest.raises(TypeError, match="Sam model"):
        SamSegmenter.from_model(object())


def test_local_checkpoint_loaded_through_registry(tmp_path):
    """vit_b from a local file, via the factory, as configured in real use (random weights saved)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        ref = sam_model_registry["vit_b"](checkpoint=None)
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(ref.state_dict(), path)
    seg = build_segmenter({"segmenter": {"backend": "sam", "checkpoint": str(path), "model_type": "vit_b",
                                         "device": "cpu"}})
    assert isinstance(seg, SamSegmenter) and seg.model_type == "vit_b" and seg.checkpoint == str(path)
    loaded = seg.model.state_dict()
    for key, value in ref.state_dict().items():
        assert torch.equal(loaded[key], value), key
    wrong = tmp_path / "tiny.pth"
    torch.save(random_sam("tiny").state_dict(), wrong)
    with pytest.raises(RuntimeError, match="model_type='vit_b'"):
        SamSegmenter(str(wrong), model_type="vit_b")


def test_real_sam_on_synthetic(grasp_sequence, loose_box):
    ckpt = os.environ.get("DEXGRASPVLA_SAM_CHECKPOINT")
    if not ckpt or not os.path.isfile(ckpt):
        pytest.skip("accuracy with released weights: set DEXGRASPVLA_SAM_CHECKPOINT to a local SAM checkpoint "
                    "(and DEXGRASPVLA_SAM_MODEL_TYPE if not vit_b)")
    model_type = os.environ.get("DEXGRASPVLA_SAM_MODEL_TYPE", "vit_b")
    seg = SamSegmenter(ckpt, model_type=model_type, device="cpu")
    seq = grasp_sequence(0, n_frames=1)
    mask = seg.segment(seq.frames[0], loose_box(seq.target_box, 0))
    assert mask_iou(mask, seq.masks[0]) >= 0.8
