"""SAM 2 as a second segmenter + tracker back-end (optional ``[sam2]`` extra, local checkpoint).

* :class:`Sam2Segmenter` — box → mask with ``SAM2ImagePredictor`` (best of the multimask outputs).
* :class:`Sam2Tracker` — streaming video object segmentation: ``start(frame, mask)`` gives SAM 2
  the object's mask as a conditioning frame, each ``track(frame)`` runs one step of SAM 2's memory
  attention on the new frame. SAM 2's own ``SAM2VideoPredictor`` wants the whole video up front
  (a JPEG folder or an MP4); the robot sees one frame at a time, so :class:`Sam2Tracker` keeps
  the predictor's per-video state itself and runs the predictor's per-frame step on each new
  frame — the same calls ``propagate_in_video`` makes, with the same results (checked by the
  tests against ``propagate_in_video`` on a saved video) — and forgets memory frames the model
  can no longer attend to, so a long episode does not grow the state.

Models are built by SAM 2's own hydra builders (``build_sam2`` / ``build_sam2_video_predictor``)
from the config packaged with ``sam2`` (``model_type`` → ``configs/sam2.1/sam2.1_hiera_t.yaml``
...). Weights come from a local file; nothing is downloaded. Building never leaves Hydra's global
state changed (``import sam2`` and its builders initialise Hydra globally; this project composes
its own configs with Hydra too).

Install: ``pip install -e .[sam2]`` — on PyPI ``sam2`` is a source distribution whose build
downloads a second copy of torch unless told otherwise; see ``docs/perception.md``::

    SAM2_BUILD_CUDA=0 pip install --no-build-isolation "sam2==1.1.0"
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import os
from collections import OrderedDict
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np

from .base import MaskTracker, Segmenter, check_image, check_mask, clip_box
from .errors import PerceptionDependencyError, check_weights_file

__all__ = [
    "Sam2Segmenter",
    "Sam2Tracker",
    "SAM2_MODEL_TYPES",
    "SAM2_CHECKPOINT_URLS",
    "SAM2_INSTALL_HINT",
    "build_sam2_model",
    "fill_small_holes",
]

_SAM2_1 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
_SAM2_0 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824"

#: model_type -> (config packaged with ``sam2``, official checkpoint URL)
SAM2_MODEL_TYPES = {
    "sam2.1_hiera_t": ("configs/sam2.1/sam2.1_hiera_t.yaml", f"{_SAM2_1}/sam2.1_hiera_tiny.pt"),
    "sam2.1_hiera_s": ("configs/sam2.1/sam2.1_hiera_s.yaml", f"{_SAM2_1}/sam2.1_hiera_small.pt"),
    "sam2.1_hiera_b+": ("configs/sam2.1/sam2.1_hiera_b+.yaml", f"{_SAM2_1}/sam2.1_hiera_base_plus.pt"),
    "sam2.1_hiera_l": ("configs/sam2.1/sam2.1_hiera_l.yaml", f"{_SAM2_1}/sam2.1_hiera_large.pt"),
    "sam2_hiera_t": ("configs/sam2/sam2_hiera_t.yaml", f"{_SAM2_0}/sam2_hiera_tiny.pt"),
    "sam2_hiera_s": ("configs/sam2/sam2_hiera_s.yaml", f"{_SAM2_0}/sam2_hiera_small.pt"),
    "sam2_hiera_b+": ("configs/sam2/sam2_hiera_b+.yaml", f"{_SAM2_0}/sam2_hiera_base_plus.pt"),
    "sam2_hiera_l": ("configs/sam2/sam2_hiera_l.yaml", f"{_SAM2_0}/sam2_hiera_large.pt"),
}
SAM2_CHECKPOINT_URLS = {k: url for k, (_, url) in SAM2_MODEL_TYPES.items()}

SAM2_INSTALL_HINT = (
    "the Python package 'sam2' is not installed: run "
    "`SAM2_BUILD_CUDA=0 pip install --no-build-isolation \"sam2==1.1.0\"` in this environment "
    "(it is a source distribution; without these flags pip builds it against a second, freshly "
    "downloaded torch), see docs/perception.md"
)

#: ``SAM2VideoPredictor.init_state`` streams a video of known length; a live stream has none.
#: This length only bounds how many past object pointers the model attends to (min(length, 16)).
_STREAM_LENGTH = 1 << 30


# ----------------------------------------------------------------------------- hydra isolation
@contextlib.contextmanager
def _hydra_state_kept() -> Iterator[None]:
    """Run the body with Hydra's global state as it is, then put back the state from before."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton

    had = GlobalHydra in Singleton._instances
    backup = copy.deepcopy(Singleton._instances[GlobalHydra]) if had else None
    try:
        yield
    finally:
        if had:
            Singleton._instances[GlobalHydra] = backup
        else:
            Singleton._instances.pop(GlobalHydra, None)


def _import_sam2():
    """Import ``sam2`` (its ``__init__`` initialises Hydra globally) without keeping that state."""
    try:
        with _hydra_state_kept():
            import sam2.build_sam  # noqa: F401
            import sam2.sam2_image_predictor  # noqa: F401
            import sam2.sam2_video_predictor  # noqa: F401
    except ImportError as exc:
        raise PerceptionDependencyError("sam2", [f"{SAM2_INSTALL_HINT} [import error: {exc}]"]) from None
    import sam2

    return sam2


def _config_of(model_type: str) -> str:
    if model_type not in SAM2_MODEL_TYPES:
        raise ValueError(f"unknown SAM 2 model_type {model_type!r}; valid: {', '.join(SAM2_MODEL_TYPES)}")
    return SAM2_MODEL_TYPES[model_type][0]


def build_sam2_model(model_type: str = "sam2.1_hiera_t", checkpoint: Optional[str] = None,
                     device: str = "cpu", video: bool = False, hydra_overrides: Sequence[str] = ()):
    """Build a SAM 2 model with the library's hydra builder, Hydra's global state left as it was.

    Args:
        model_type: a key of :data:`SAM2_MODEL_TYPES` (the packaged config to compose).
        checkpoint: local ``.pt`` file in SAM 2's format (``{"model": state_dict}``); ``None``
            keeps the random initialisation (tests, latency benchmarks).
        device: torch device string.
        video: build a ``SAM2VideoPredictor`` (for :class:`Sam2Tracker`) instead of ``SAM2Base``.
        hydra_overrides: extra config overrides, e.g. ``["++model.image_encoder.trunk.embed_dim=16"]``.
    """
    config = _config_of(model_type)
    _import_sam2()
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    builder = build_sam2_video_predictor if video else build_sam2
    with _hydra_state_kept():
        GlobalHydra.instance().clear()
        with initialize_config_module("sam2", version_base="1.2"):
            try:
                return builder(config_file=config, ckpt_path=checkpoint, device=str(device),
                               hydra_overrides_extra=list(hydra_overrides))
            except RuntimeError as exc:  # sam2 raises a bare RuntimeError on missing/unexpected keys
                if checkpoint is None:
                    raise
                raise RuntimeError(f"could not load SAM 2 {model_type} weights from '{checkpoint}' (does the "
                                   f"file match model_type={model_type!r}?): {exc or 'missing or unexpected keys'}"
                                   ) from exc


def _check_requirements(checkpoint: Optional[str], model_type: str, config_key: str) -> str:
    """Raise one :class:`PerceptionDependencyError` listing every missing piece; return the path."""
    _config_of(model_type)  # ValueError for an unknown model type first
    problems = []
    try:
        _import_sam2()
    except PerceptionDependencyError as exc:
        problems += exc.problems
    bad = check_weights_file(checkpoint, f"SAM 2 {model_type} checkpoint", SAM2_CHECKPOINT_URLS[model_type],
                             config_key)
    if bad:
        problems.append(bad)
    if problems:
        raise PerceptionDependencyError("sam2", problems)
    return os.path.expanduser(str(checkpoint))


# ----------------------------------------------------------------------------- segmenter
class Sam2Segmenter(Segmenter):
    """SAM 2 with a box prompt; returns the best-scoring of the multimask outputs.

    Requirements are checked in the constructor (one :class:`PerceptionDependencyError` lists the
    missing package and/or checkpoint, with how to fix each). Weights are never downloaded.

    Args:
        checkpoint: local SAM 2 checkpoint, e.g. ``weights/sam2.1_hiera_large.pt``.
        model_type: a key of :data:`SAM2_MODEL_TYPES`; must match the checkpoint.
        device: torch device string.
        multimask: ask for three candidate masks and keep the highest-scoring one.
        hydra_overrides: extra overrides of the packaged model config (advanced; tests).
    """

    def __init__(self, checkpoint: Optional[str], model_type: str = "sam2.1_hiera_l", device: str = "cpu",
                 multimask: bool = True, hydra_overrides: Sequence[str] = ()):
        checkpoint = _check_requirements(checkpoint, model_type, "segmenter.checkpoint")
        model = build_sam2_model(model_type, checkpoint, device, video=False, hydra_overrides=hydra_overrides)
        self._setup(model, multimask)
        self.checkpoint, self.model_type = checkpoint, model_type

    @classmethod
    def from_model(cls, model, multimask: bool = True) -> "Sam2Segmenter":
        """Wrap an already built SAM 2 model (e.g. ``build_sam2_model(checkpoint=None)``)."""
        _import_sam2()
        from sam2.modeling.sam2_base import SAM2Base

        if not isinstance(model, SAM2Base):
            raise TypeError(f"expected a SAM 2 model (SAM2Base), got {type(model).__name__}")
        self = cls.__new__(cls)
        self._setup(model, multimask)
        self.checkpoint = self.model_type = None
        return self

    def _setup(self, model, multimask: bool) -> None:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        if int(model.image_size) != 1024:
            # SAM2ImagePredictor (sam2 1.1.0) hard-codes the feature sizes of a 1024-pixel input
            raise ValueError(f"Sam2Segmenter needs a model with image_size 1024, got {model.image_size}")
        model.eval()
        self.model = model
        self.multimask = bool(multimask)
        self._predictor = SAM2ImagePredictor(model)
        self._image_key = None

    @property
    def device(self) -> str:
        return str(self.model.device)

    def _set_image(self, image: np.ndarray) -> None:
        # the image embedding is the expensive part: reuse it for repeated boxes on one image
        key = (image.shape, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        if key != self._image_key:
            self._predictor.set_image(np.ascontiguousarray(image[..., ::-1]))  # SAM 2 wants RGB
            self._image_key = key

    def segment(self, image_bgr: np.ndarray, box_xyxy: Sequence[float]) -> np.ndarray:
        """Segment the object in ``box_xyxy``; see :meth:`Segmenter.segment`."""
        import torch

        image = check_image(image_bgr)
        box = np.asarray(clip_box(box_xyxy, image.shape), dtype=np.float32)
        with torch.inference_mode():
            self._set_image(image)
            masks, scores, _ = self._predictor.predict(box=box, multimask_output=self.multimask)
        best = int(np.argmax(scores))
        return np.asarray(masks[best]) > 0


# ----------------------------------------------------------------------------- tracker
def fill_small_holes(logits: np.ndarray, max_area: int) -> np.ndarray:
    """SAM 2's hole filling on mask logits, without its CUDA extension.

    Background regions (``logits <= 0``, 8-connected) of at most ``max_area`` pixels become
    foreground with the small positive score 0.1 — what ``sam2.utils.misc.fill_holes_in_mask_scores``
    does with the ``sam2._C`` kernel, which a CPU-only install does not have.
    """
    out = np.array(logits, dtype=np.float32, copy=True)
    if max_area <= 0:
        return out
    flat = out.reshape(-1, *out.shape[-2:])
    for m in flat:
        n, labels, stats, _ = cv2.connectedComponentsWithStats((m <= 0).astype(np.uint8), connectivity=8)
        small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] <= max_area)
        small = small[small > 0]  # label 0 = the foreground pixels themselves
        if small.size:
            m[np.isin(labels, small)] = 0.1
    return out


class Sam2Tracker(MaskTracker):
    """Streaming SAM 2 video object segmentation of one object (see the module docstring).

    ``track`` returns the visible object (SAM 2 predicts occlusion: an all-False mask when it
    decides the object is not in view).

    Args:
        weights: local SAM 2 checkpoint (config key ``tracker.weights``, like Cutie's).
        model_type: a key of :data:`SAM2_MODEL_TYPES`; must match the checkpoint.
        device: torch device string.
        fill_hole_area: fill background holes up to this many pixels (at SAM 2's 1/4-resolution
            mask, as ``build_sam2_video_predictor`` sets it: 8); 0 disables.
        hydra_overrides: extra overrides of the packaged model config (advanced; tests).
    """

    def __init__(self, weights: Optional[str], model_type: str = "sam2.1_hiera_l", device: str = "cpu",
                 fill_hole_area: int = 8, hydra_overrides: Sequence[str] = ()):
        weights = _check_requirements(weights, model_type, "tracker.weights")
        model = build_sam2_model(model_type, weights, device, video=True, hydra_overrides=hydra_overrides)
        self._setup(model, fill_hole_area)
        self.weights, self.model_type = weights, model_type

    @classmethod
    def from_model(cls, model, fill_hole_area: int = 8) -> "Sam2Tracker":
        """Wrap a ``SAM2VideoPredictor`` (e.g. ``build_sam2_model(video=True, checkpoint=None)``)."""
        _import_sam2()
        from sam2.sam2_video_predictor import SAM2VideoPredictor

        if not isinstance(model, SAM2VideoPredictor):
            raise TypeError("Sam2Tracker needs a SAM2VideoPredictor (build_sam2_model(..., video=True)), "
                            f"got {type(model).__name__}")
        self = cls.__new__(cls)
        self._setup(model, fill_hole_area)
        self.weights = self.model_type = None
        return self

    def _setup(self, model, fill_hole_area: int) -> None:
        import torch

        model.eval()
        # The predictor fills holes with the sam2._C CUDA kernel and only warns (every frame) when
        # it is missing; the same filling is done here with OpenCV instead.
        model.fill_hole_area = 0
        self.model = model
        self.fill_hole_area = int(fill_hole_area)
        self._mean = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
        self._std = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]
        stride = 1 if model.training else int(model.memory_temporal_stride_for_eval)
        # past frames the next step may read: memories (num_maskmem - 1 of them, stride apart)
        # and object pointers (max_obj_ptrs_in_encoder - 1 frames back)
        self._keep = max(int(model.max_obj_ptrs_in_encoder), (int(model.num_maskmem) - 1) * stride + 2)
        self._state = None
        self._t = -1

    @property
    def device(self) -> str:
        return str(self.model.device)

    def _frame_tensor(self, image_bgr: np.ndarray):
        """The frame as ``SAM2VideoPredictor`` loads it (PIL resize to the model size, /255, normalised)."""
        import torch
        from PIL import Image

        size = int(self.model.image_size)
        rgb = Image.fromarray(np.ascontiguousarray(image_bgr[..., ::-1]))
        img = torch.from_numpy(np.array(rgb.resize((size, size))) / 255.0).permute(2, 0, 1).float()
        img -= self._mean
        img /= self._std
        return img.to(self.model.device)

    def _new_state(self, height: int, width: int) -> dict:
        """The per-video state of ``SAM2VideoPredictor.init_state`` (sam2 1.1.0) for a live stream."""
        device = self.model.device
        return {
            "images": {}, "num_frames": _STREAM_LENGTH,
            "offload_video_to_cpu": False, "offload_state_to_cpu": False,
            "video_height": int(height), "video_width": int(width),
            "device": device, "storage_device": device,
            "point_inputs_per_obj": {}, "mask_inputs_per_obj": {},
            "cached_features": {}, "constants": {},
            "obj_id_to_idx": OrderedDict(), "obj_idx_to_id": OrderedDict(), "obj_ids": [],
            "output_dict_per_obj": {}, "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {},
        }

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has been called since the last :meth:`reset`."""
        return self._state is not None

    @property
    def memory_frames(self) -> int:
        """How many past frames' outputs the tracker holds (bounded, whatever the episode length)."""
        if self._state is None:
            return 0
        out = self._state["output_dict_per_obj"][0]
        return len(out["cond_frame_outputs"]) + len(out["non_cond_frame_outputs"])

    def reset(self) -> None:
        """Forget the object and SAM 2's memory."""
        self._state = None
        self._t = -1

    def start(self, image_bgr: np.ndarray, mask: np.ndarray) -> None:
        """Give SAM 2 the object's mask on this frame (its conditioning frame)."""
        import torch

        image = check_image(image_bgr)
        mask = check_mask(mask, image.shape)
        if not mask.any():
            raise ValueError("Sam2Tracker.start needs a non-empty mask")
        self.reset()
        state = self._new_state(*image.shape[:2])
        state["images"] = {0: self._frame_tensor(image)}
        with torch.inference_mode():
            self.model.add_new_mask(state, frame_idx=0, obj_id=1, mask=torch.from_numpy(mask))
            # encodes the conditioning frame into memory, as propagate_in_video does first
            self.model.propagate_in_video_preflight(state)
        state["frames_tracked_per_obj"][0][0] = {"reverse": False}
        self._state, self._t = state, 0

    def track_logits(self, image_bgr: np.ndarray) -> np.ndarray:
        """One tracking step; the object's mask logits ``(H, W)`` float32 (``> 0`` = object)."""
        import torch

        if not self.started:
            raise RuntimeError("Sam2Tracker.track called before start(image, mask)")
        image = check_image(image_bgr)
        state = self._state
        if image.shape[:2] != (state["video_height"], state["video_width"]):
            raise ValueError(f"frame size {image.shape[:2]} differs from the start frame "
                             f"{(state['video_height'], state['video_width'])}")
        t = self._t + 1
        state["images"] = {t: self._frame_tensor(image)}
        out_dict = state["output_dict_per_obj"][0]
        with torch.inference_mode():
            # the body of SAM2VideoPredictor.propagate_in_video for one new frame and one object
            current_out, low_res = self.model._run_single_frame_inference(
                inference_state=state, output_dict=out_dict, frame_idx=t, batch_size=1,
                is_init_cond_frame=False, point_inputs=None, mask_inputs=None, reverse=False,
                run_mem_encoder=True)
            out_dict["non_cond_frame_outputs"][t] = current_out
            state["frames_tracked_per_obj"][0][t] = {"reverse": False}
            if self.fill_hole_area > 0:
                low_res = torch.from_numpy(fill_small_holes(low_res.float().cpu().numpy(),
                                                            self.fill_hole_area)).to(low_res.device)
            _, video_res = self.model._get_orig_video_res_output(state, low_res)
        self._t = t
        self._forget_before(t + 1 - self._keep)
        return video_res[0, 0].float().cpu().numpy()

    def track(self, image_bgr: np.ndarray) -> np.ndarray:
        """Propagate the mask to this frame; bool ``(H, W)``."""
        return self.track_logits(image_bgr) > 0

    def _forget_before(self, first_kept: int) -> None:
        state = self._state
        non_cond = state["output_dict_per_obj"][0]["non_cond_frame_outputs"]
        tracked = state["frames_tracked_per_obj"][0]
        for t in [t for t in non_cond if t < first_kept]:
            del non_cond[t]
            tracked.pop(t, None)
