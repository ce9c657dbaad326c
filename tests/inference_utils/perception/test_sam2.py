"""SAM 2 segmenter and streaming tracker on real ``sam2`` models with random weights.

Models come from SAM 2's own hydra builders (``build_sam2`` / ``build_sam2_video_predictor``,
``ckpt_path=None``) with a shrunken Hiera-T config; nothing is downloaded and nothing in SAM 2 is
mocked. Random weights make the masks meaningless, so the tests compare our interface with the
library's own predictors: the segmenter with ``SAM2ImagePredictor``, the frame-by-frame tracker
with ``SAM2VideoPredictor.propagate_in_video`` over the same frames saved as a JPEG video.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

# find_spec, not importorskip: `import sam2` initialises Hydra globally (our builders don't keep that)
if importlib.util.find_spec("sam2") is None:
    pytest.skip("sam2 not installed: `SAM2_BUILD_CUDA=0 pip install --no-build-isolation 'sam2==1.1.0'` "
                "(a source distribution; see docs/perception.md)", allow_module_level=True)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

import torch  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from inference_utils.perception import (Sam2Segmenter, Sam2Tracker, build_segmenter,  # noqa: E402
                                        build_tracker)
from inference_utils.perception.base import clip_box  # noqa: E402
from inference_utils.perception.random_models import SAM2_TINY_OVERRIDES, random_sam2  # noqa: E402
from inference_utils.perception.sam2_backend import _hydra_state_kept, fill_small_holes  # noqa: E402

BOX = (250.4, 230.0, 371.7, 352.2)
# a short memory (2 past frames, 4 object pointers) so that forgetting old frames is exercised
# within a few frames; a small input keeps the test fast
TRACK_OVERRIDES = ["++model.num_maskmem=3", "++model.max_obj_ptrs_in_encoder=4"]


@pytest.fixture(scope="module")
def tiny_image_model():
    return random_sam2("tiny", seed=0)


@pytest.fixture(scope="module")
def frame(grasp_sequence):
    return grasp_sequence(0, n_frames=2).frames[0]  # 480x640 BGR


def test_box_to_mask_is_the_librarys_best_candidate(tiny_image_model, frame):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    seg = Sam2Segmenter.from_model(tiny_image_model)
    mask = seg.segment(frame, BOX)
    assert mask.dtype == np.bool_ and mask.shape == frame.shape[:2]
    pred = SAM2ImagePredictor(tiny_image_model)
    pred.set_image(np.ascontiguousarray(frame[..., ::-1]))
    with torch.inference_mode():
        logits, scores, _ = pred.predict(box=np.asarray(clip_box(BOX, frame.shape), np.float32),
                                         multimask_output=True, return_logits=True)
    best = logits[int(np.argmax(scores))]
    assert np.array_equal(mask, best > 0)
    assert 0 < mask.sum() < mask.size  # the object-score bias makes the random model answer
    pred.set_image(np.ascontiguousarray(frame))  # fed BGR, the library answers differently
    with torch.inference_mode():
        bgr_logits, _, _ = pred.predict(box=np.asarray(clip_box(BOX, frame.shape), np.float32),
                                        multimask_output=True, return_logits=True)
    assert np.abs(bgr_logits - logits).max() > 1e-3
    features = seg._predictor._features
    seg.segment(frame, (10, 10, 200, 150))  # same image: the embedding is reused
    assert seg._predictor._features is features


def test_tracker_matches_propagate_in_video(grasp_sequence, tmp_path):
    model = random_sam2("tiny", video=True, seed=1, image_size=128, hydra_overrides=TRACK_OVERRIDES)
    seq = grasp_sequence(0, n_frames=8)
    frames = []  # the frames as SAM2VideoPredictor.init_state reads them back from JPEG
    for i, f in enumerate(seq.frames):
        Image.fromarray(np.ascontiguousarray(f[..., ::-1])).save(tmp_path / f"{i:05d}.jpg", quality=95)
        frames.append(np.ascontiguousarray(np.asarray(Image.open(tmp_path / f"{i:05d}.jpg"))[..., ::-1]))

    tracker = Sam2Tracker.from_model(model, fill_hole_area=0)
    assert not tracker.started
    with pytest.raises(RuntimeError, match="before start"):
        tracker.track(frames[1])
    with pytest.raises(ValueError, match="non-empty"):
        tracker.start(frames[0], np.zeros(frames[0].shape[:2], bool))
    tracker.start(frames[0], seq.masks[0])
    ours, held = [], []
    for f in frames[1:]:
        ours.append(tracker.track_logits(f))
        held.append(tracker.memory_frames)
    with pytest.raises(ValueError, match="differs from the start frame"):
        tracker.track(np.ascontiguousarray(frames[1][:240]))

    with torch.inference_mode():
        state = model.init_state(str(tmp_path))
        model.add_new_mask(state, frame_idx=0, obj_id=1, mask=seq.masks[0])
        offline = {t: m[0, 0].float().numpy() for t, _, m in model.propagate_in_video(state)}
    for t, logits in enumerate(ours, start=1):
        assert logits.shape == frames[0].shape[:2]
        np.testing.assert_allclose(logits, offline[t], rtol=0, atol=1e-6, err_msg=f"frame {t}")
    assert any(0 < (lg > 0).mean() < 1 for lg in ours)
    # the conditioning frame + the frames the model can still attend to (4 pointers back), no more
    assert held[-1] == 1 + 4 and max(held) == 1 + 4 and held[0] == 2
    assert set(state) <= set(tracker._new_state(1, 1))  # our stream state has every init_state key

    mask = tracker.track(frames[1])
    assert mask.dtype == np.bool_ and mask.shape == frames[0].shape[:2]
    tracker.reset()
    assert not tracker.started and tracker.memory_frames == 0


def test_hole_filling_matches_sam2_definition():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.5, 1.0, (2, 1, 64, 64)).astype(np.float32)
    filled = fill_small_holes(logits, 8)
    for m, f in zip(logits.reshape(-1, 64, 64), filled.reshape(-1, 64, 64)):
        labels, n = ndimage.label(m <= 0, structure=np.ones((3, 3)))
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        hole = (labels > 0) & (areas[labels] <= 8)
        assert hole.any()
        assert np.array_equal(f, np.where(hole, np.float32(0.1), m))
    assert np.array_equal(fill_small_holes(logits, 0), logits)


def test_local_checkpoints_through_the_factory(tiny_image_model, tmp_path):
    path = tmp_path / "sam2_tiny_random.pt"
    torch.save({"model": tiny_image_model.state_dict()}, path)
    common = {"checkpoint": str(path), "model_type": "sam2.1_hiera_t", "device": "cpu",
              "hydra_overrides": SAM2_TINY_OVERRIDES}
    seg = build_segmenter({"segmenter": {"backend": "sam2", **common}})
    assert isinstance(seg, Sam2Segmenter) and seg.checkpoint == str(path)
    loaded = seg.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in tiny_image_model.state_dict().items())

    trk = build_tracker({"tracker": {"backend": "sam2", "weights": str(path), "model_type": "sam2.1_hiera_t",
                                     "hydra_overrides": SAM2_TINY_OVERRIDES, "fill_hole_area": 4}})
    assert isinstance(trk, Sam2Tracker) and trk.fill_hole_area == 4 and trk.weights == str(path)
    assert all(torch.equal(trk.model.state_dict()[k], v) for k, v in tiny_image_model.state_dict().items())

    with pytest.raises(RuntimeError, match="does the file match model_type"):
        Sam2Segmenter(str(path), model_type="sam2.1_hiera_t")  # the full-size config: keys mismatch
    with pytest.raises(ValueError, match="image_size 1024"):
        Sam2Segmenter.from_model(random_sam2("tiny", image_size=256))


def test_building_keeps_hydra_global_state(tmp_path):
    """``import sam2`` and its builders initialise Hydra globally; ours must leave it as it was."""
    from hydra import compose, initialize_config_dir

    from inference_utils.runtime.config import CONFIG_DIR, CONFIG_NAME

    before = GlobalHydra.instance().is_initialized()
    random_sam2("tiny", video=True, image_size=256)
    assert GlobalHydra.instance().is_initialized() == before
    with _hydra_state_kept():  # whatever the state of this test session, start from none
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            random_sam2("tiny", image_size=256, video=True)
            cfg = compose(config_name=CONFIG_NAME)  # the project's Hydra is still the one in place
            assert "perception" in cfg
        assert not GlobalHydra.instance().is_initialized()
    assert GlobalHydra.instance().is_initialized() == before
