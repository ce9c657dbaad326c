"""Adaptive foreground/background colour histograms in HSV space."""
from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = ["ColourModel", "hsv_bin_index"]

H_BINS, S_BINS, V_BINS = 18, 8, 8
N_BINS = H_BINS * S_BINS * V_BINS
_LOW_SAT = 32  # below this saturation the hue is noise: all such pixels share hue bin 0


def hsv_bin_index(image_bgr: np.ndarray) -> np.ndarray:
    """Per-pixel histogram bin index (int32, shape (H, W)) of a BGR uint8 image."""
    hsv = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2HSV)
    h = hsv[..., 0].astype(np.int32) * H_BINS // 180
    s = hsv[..., 1]
    h[s < _LOW_SAT] = 0
    return (h * S_BINS + (s >> 5).astype(np.int32)) * V_BINS + (hsv[..., 2] >> 5).astype(np.int32)


class ColourModel:
    """Smoothed, exponentially updated colour histograms: object, surroundings, occluder.

    ``likelihoods(idx)`` returns per-pixel ``p(colour | object)`` and ``p(colour | not object)``,
    the latter being the larger of the surroundings' and the occluder's likelihood. The
    occluder histogram collects colours of things that newly appear next to the object (the
    hand), which may be rare among the surroundings but must still not join the object.
    Histograms are smoothed over neighbouring bins (hue wraps around) so that moderate lighting
    changes do not fall into empty bins.
    """

    def __init__(self, smooth_sigma=(0.8, 0.6, 0.8), floor: float = 1e-4):
        self.smooth_sigma = smooth_sigma
        self.floor = float(floor)
        self.fg = None
        self.bg = None
        self.occ = None
        self._p_fg = None
        self._p_bg = None

    @property
    def ready(self) -> bool:
        """True once both histograms have been fitted."""
        return self.fg is not None and self.bg is not None

    @staticmethod
    def _hist(idx: np.ndarray) -> np.ndarray:
        counts = np.bincount(idx.ravel(), minlength=N_BINS).astype(np.float64)
        total = counts.sum()
        return counts / total if total > 0 else counts

    def _refresh(self) -> None:
        def prep(h):
            sm = gaussian_filter(h.reshape(H_BINS, S_BINS, V_BINS), self.smooth_sigma,
                                 mode=("wrap", "nearest", "nearest")).ravel()
            sm = sm / max(sm.sum(), 1e-12) + self.floor
            return (sm / sm.sum()).astype(np.float32)

        self._p_fg = prep(self.fg)
        self._p_bg = prep(self.bg)
        if self.occ is not None:
            sm = gaussian_filter(self.occ.reshape(H_BINS, S_BINS, V_BINS), self.smooth_sigma,
                                 mode=("wrap", "nearest", "nearest")).ravel().astype(np.float32)
            self._p_bg = np.maximum(self._p_bg, sm / max(float(sm.sum()), 1e-12))

    def fit(self, fg_idx: np.ndarray, bg_idx: np.ndarray) -> None:
        """Fit both histograms from scratch (bin indices of object / background pixels)."""
        if fg_idx.size == 0 or bg_idx.size == 0:
            raise ValueError("colour model needs both object and background pixels")
        self.fg = self._hist(fg_idx)
        self.bg = self._hist(bg_idx)
        self.occ = None
        self._refresh()

    def update(self, fg_idx=None, bg_idx=None, fg_rate: float = 0.05, bg_rate: float = 0.15,
               min_pixels: int = 20, occ_idx=None, occ_rate: float = 0.3) -> None:
        """Blend new samples into the histograms (skipped for sets smaller than ``min_pixels``)."""
        changed = False
        if occ_idx is not None and occ_idx.size >= min_pixels and occ_rate > 0:
            h = self._hist(occ_idx)
            self.occ = h if self.occ is None else (1.0 - occ_rate) * self.occ + occ_rate * h
            changed = True
        if fg_idx is not None and fg_idx.size >= min_pixels and fg_rate > 0:
            self.fg = (1.0 - fg_rate) * self.fg + fg_rate * self._hist(fg_idx)
            changed = True
        if bg_idx is not None and bg_idx.size >= min_pixels and bg_rate > 0:
            self.bg = (1.0 - bg_rate) * self.bg + bg_rate * self._hist(bg_idx)
            changed = True
        if changed:
            self._refresh()

    def likelihoods(self, idx: np.ndarray):
        """Per-pixel ``(p_fg, p_bg)`` float32 arrays for bin indices ``idx``."""
        if not self.ready:
            raise RuntimeError("colour model used before fit()")
        return self._p_fg[idx], self._p_bg[idx]
