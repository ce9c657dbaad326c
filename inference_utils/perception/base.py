"""Abstract interfaces of the perception components and shared input checks.

* :class:`Segmenter` turns a bounding box on a BGR image into a boolean object mask.
* :class:`MaskTracker` follows a mask through a stream of BGR frames.

Images are ``np.uint8`` arrays of shape ``(H, W, 3)`` in **BGR** order (OpenCV / dataset
convention); masks are ``np.bool_`` arrays of shape ``(H, W)``.
"""
from __future__ import annotations

import abc
from typing import Sequence

import numpy as np

__all__ = ["Segmenter", "MaskTracker", "check_image", "check_mask", "clip_box"]


def check_image(image_bgr: np.ndarray) -> np.ndarray:
    """Validate a BGR image; return it as a C-contiguous uint8 ``(H, W, 3)`` array."""
    if not isinstance(image_bgr, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image_bgr).__name__}")
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3) (BGR), got {image_bgr.shape}")
    if image_bgr.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image_bgr.dtype}")
    return np.ascontiguousarray(image_bgr)


def check_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Validate a mask against an image shape ``(H, W, ...)``; return it as bool ``(H, W)``."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.shape != tuple(shape[:2]):
        raise ValueError(f"mask shape {mask.shape} does not match image shape {tuple(shape[:2])}")
    return mask > 0 if mask.dtype != np.bool_ else mask


def clip_box(box_xyxy: Sequence[float], shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Round a box ``[x1, y1, x2, y2]`` (pixels, x2/y2 exclusive) to ints inside the image.

    Raises ``ValueError`` when the box is malformed or does not overlap the image.
    """
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(-1)
    if box.size != 4 or not np.all(np.isfinite(box)):
        raise ValueError(f"box must be 4 finite numbers [x1, y1, x2, y2], got {box_xyxy!r}")
    h, w = int(shape[0]), int(shape[1])
    x1, y1, x2, y2 = box
    if x2 < x1:
        x1, x2 = x2, x1
    if y2 < y1:
        y1, y2 = y2, y1
    x1, y1 = int(max(0, np.floor(x1))), int(max(0, np.floor(y1)))
    x2, y2 = int(min(w, np.ceil(x2))), int(min(h, np.ceil(y2)))
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise ValueError(f"box {list(np.round(box, 1))} is empty or outside the {w}x{h} image")
    return x1, y1, x2, y2


class Segmenter(abc.ABC):
    """Box-prompted object segmentation: ``segment(image_bgr, box_xyxy) -> bool mask``."""

    @abc.abstractmethod
    def segment(self, image_bgr: np.ndarray, box_xyxy: Sequence[float]) -> np.ndarray:
        """Segment the object inside ``box_xyxy`` (``[x1, y1, x2, y2]`` pixels).

        Args:
            image_bgr: uint8 ``(H, W, 3)`` BGR image.
            box_xyxy: the object's bounding box; it may be loose (planner boxes).

        Returns:
            bool ``(H, W)`` mask of the object (all False if nothing was found).
        """

    def __call__(self, image_bgr: np.ndarray, box_xyxy: Sequence[float]) -> np.ndarray:
        return self.segment(image_bgr, box_xyxy)


class MaskTracker(abc.ABC):
    """Video object mask tracking: ``start(first_image, first_mask)`` then ``track(frame)``.

    ``track`` returns the *visible* part of the object in each new frame (pixels covered by the
    hand are not part of the mask), which is what the controller receives at ~20 Hz.
    """

    @abc.abstractmethod
    def start(self, image_bgr: np.ndarray, mask: np.ndarray) -> None:
        """(Re)initialise the tracker from a frame and the object's mask in that frame."""

    @abc.abstractmethod
    def track(self, image_bgr: np.ndarray) -> np.ndarray:
        """Return the object's bool ``(H, W)`` mask in the next frame."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the current object; :meth:`start` must be called before :meth:`track`."""

    @property
    @abc.abstractmethod
    def started(self) -> bool:
        """Whether :meth:`start` has been called since the last :meth:`reset`."""
