"""Box-prompted segmentation with Segment Anything (optional ``[sam]`` extra, local checkpoint)."""
from __future__ import annotations

import hashlib
import os
from typing import Optional, Sequence

import numpy as np

from .base import Segmenter, check_image, clip_box
from .errors import SAM_CHECKPOINT_URLS, SAM_INSTALL_HINT, PerceptionDependencyError, check_weights_file

__all__ = ["SamSegmenter", "SAM_MODEL_TYPES"]

SAM_MODEL_TYPES = tuple(SAM_CHECKPOINT_URLS)


class SamSegmenter(Segmenter):
    """Segment Anything with a box prompt; returns the best-scoring of SAM's multi-mask outputs.

    All requirements are checked in the constructor; if the ``segment-anything`` package or the
    checkpoint file is missing, one :class:`PerceptionDependencyError` lists every problem and
    how to fix it. Weights are never downloaded.

    Args:
        checkpoint: local checkpoint path, e.g. ``weights/sam_vit_h_4b8939.pth``.
        model_type: ``vit_h``, ``vit_l`` or ``vit_b`` (must match the checkpoint).
        device: torch device string (``cpu``, ``cuda``, or a specific CUDA device).
        multimask: ask SAM for several candidate masks and keep the highest-scoring one.
    """

    def __init__(self, checkpoint: Optional[str], model_type: str = "vit_h", device: str = "cpu",
                 multimask: bool = True):
        if model_type not in SAM_MODEL_TYPES:
            raise ValueError(f"unknown SAM model_type {model_type!r}; valid: {', '.join(SAM_MODEL_TYPES)}")
        problems = []
        try:
            import segment_anything  # noqa: F401
        except ImportError:
            problems.append(SAM_INSTALL_HINT)
        bad = check_weights_file(checkpoint, f"SAM {model_type} checkpoint", SAM_CHECKPOINT_URLS[model_type],
                                 "segmenter.checkpoint")
        if bad:
            problems.append(bad)
        if problems:
            raise PerceptionDependencyError("sam", problems)
        from segment_anything import sam_model_registry

        checkpoint = os.path.expanduser(str(checkpoint))
        try:
            model = sam_model_registry[model_type](checkpoint=checkpoint)
        except Exception as exc:  # wrong file / wrong model type
            raise RuntimeError(f"could not load SAM {model_type} weights from '{checkpoint}' "
                               f"(does the file match model_type={model_type!r}?): {exc}") from exc
        self._setup(model, device, multimask)
        self.checkpoint = checkpoint
        self.model_type = model_type

    @classmethod
    def from_model(cls, model, device: str = "cpu", multimask: bool = True) -> "SamSegmenter":
        """Wrap an already built ``segment_anything`` ``Sam`` model (no checkpoint checks).

        For models built in code, e.g. ``sam_model_registry["vit_b"](checkpoint=None)`` (random
        weights: tests and latency benchmarks) or a model shared with other components.
        """
        try:
            from segment_anything.modeling import Sam
        except ImportError:
            raise PerceptionDependencyError("sam", [SAM_INSTALL_HINT]) from None
        if not isinstance(model, Sam):
            raise TypeError(f"expected a segment_anything Sam model, got {type(model).__name__}")
        self = cls.__new__(cls)
        self._setup(model, device, multimask)
        self.checkpoint = None
        self.model_type = None
        return self

    def _setup(self, model, device: str, multimask: bool) -> None:
        from segment_anything import SamPredictor

        self.device = str(device)
        self.multimask = bool(multimask)
        model.to(device=self.device)
        model.eval()
        self.model = model
        self._predictor = SamPredictor(model)
        self._image_key = None

    def _set_image(self, image: np.ndarray) -> None:
        # the image embedding is the expensive part: reuse it for repeated boxes on one image
        key = (image.shape, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        if key != self._image_key:
            self._predictor.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="RGB")
            self._image_key = key

    def segment(self, image_bgr: np.ndarray, box_xyxy: Sequence[float]) -> np.ndarray:
        """Segment the object in ``box_xyxy``; see :meth:`Segmenter.segment`."""
        image = check_image(image_bgr)
        box = np.asarray(clip_box(box_xyxy, image.shape), dtype=np.float32)
        self._set_image(image)
        import torch

        with torch.inference_mode():
            masks, scores, _ = self._predictor.predict(box=box, multimask_output=self.multimask)
        best = int(np.argmax(scores))
        return np.asarray(masks[best]).astype(bool)
