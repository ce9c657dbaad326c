"""Small mask helpers shared by segmenters, trackers, tests and benchmarks."""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

__all__ = ["mask_iou", "mask_to_box", "keep_components", "expand_box"]


def mask_iou(pred: np.ndarray, gt: np.ndarray, empty_value: float = 1.0) -> float:
    """Intersection over union of two boolean masks (``empty_value`` if both are empty)."""
    pred = np.asarray(pred) > 0
    gt = np.asarray(gt) > 0
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {gt.shape}")
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return float(empty_value)
    return float(np.count_nonzero(pred & gt)) / float(union)


def mask_to_box(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """Tight ``(x1, y1, x2, y2)`` box (x2/y2 exclusive) of a mask, or ``None`` if empty."""
    ys = np.flatnonzero(np.any(mask, axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(np.any(mask, axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def expand_box(box, shape, frac: float = 0.0, pad: int = 0) -> tuple[int, int, int, int]:
    """Grow a box by ``frac`` of its size plus ``pad`` pixels per side, clipped to ``shape``."""
    x1, y1, x2, y2 = box
    dx = int(round((x2 - x1) * frac)) + pad
    dy = int(round((y2 - y1) * frac)) + pad
    h, w = shape[:2]
    return max(0, x1 - dx), max(0, y1 - dy), min(w, x2 + dx), min(h, y2 + dy)


def keep_components(mask: np.ndarray, anchor: Optional[np.ndarray] = None,
                    min_anchor_frac: float = 0.3, min_rel_area: float = 0.1) -> np.ndarray:
    """Drop spurious connected components of a boolean mask.

    Without ``anchor``: keep components whose area is at least ``min_rel_area`` of the largest.
    With ``anchor`` (a bool mask, e.g. the predicted object region): keep components of which at
    least ``min_anchor_frac`` of the pixels lie on the anchor; if none qualify, keep the one with
    the largest anchor overlap (if it has any).
    """
    m8 = mask.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m8, connectivity=8)
    if n <= 2 and anchor is None:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    if areas.size == 0:
        return np.zeros(mask.shape, bool)
    if anchor is None:
        keep = np.flatnonzero(areas >= min_rel_area * areas.max()) + 1
    else:
        overlap = np.bincount(labels[anchor], minlength=n)[1:].astype(np.float64)
        frac = overlap / np.maximum(areas, 1.0)
        keep = np.flatnonzero((frac >= min_anchor_frac) & (areas >= min_rel_area * areas.max())) + 1
        if keep.size == 0:
            if overlap.max() <= 0:
                return np.zeros(mask.shape, bool)
            keep = np.array([int(np.argmax(overlap)) + 1])
    lut = np.zeros(n, bool)
    lut[keep] = True
    return lut[labels]
