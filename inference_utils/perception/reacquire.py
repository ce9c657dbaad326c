"""Re-finding a tracked object that the tracker lost (weight-free).

A hand that pushes the target (a ball rolls away, a prism slides off while occluded) moves it
faster than the tracker's optical flow follows, and the tracker's mask collapses to nothing; a
controller fed an empty mask has nothing to reach for. :class:`Reacquirer` re-detects the object
from its appearance at the start of tracking:

* **colour** — candidates are connected regions whose colour is more likely under the object's
  start histogram than under the histogram of the scene around it at the start (the table, the
  other objects, the hand at home);
* **size** — a candidate's area must be comparable to the object's reference area (so a
  finger-sized patch or a merged blob does not qualify);
* **change** — a candidate must lie where the image changed since the start, or overlap the
  object's last known place: an object of the same colour that has not moved is a distractor,
  not the target;
* **proximity** — among the remaining candidates the one nearest the last place the object was
  confidently seen wins; nothing farther than ``radius_frac`` object sizes is considered.

It is a stateless search given its start-time models: :meth:`find` returns a mask or ``None``.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from .colour_model import ColourModel, hsv_bin_index
from .grabcut import fill_holes

__all__ = ["Reacquirer"]

_K3 = np.ones((3, 3), np.uint8)


class Reacquirer:
    """Appearance-based re-detection of a lost object (see the module docstring).

    Args:
        radius_frac: search radius around the last confident position, in object sizes
            (``sqrt(reference area)``).
        min_radius: smallest search radius in pixels.
        max_side: longer side (pixels) the search window is downscaled to (bounds the latency).
        ratio: a pixel is object-coloured when ``p(colour | object) > ratio * p(colour | scene)``.
        area_range: accepted candidate area as fractions of the reference area.
        change_thresh: colour difference (0..255) to the start frame that counts as changed.
        min_changed: fraction of a candidate's pixels that must have changed (unless it overlaps
            the object's last known place by ``min_overlap`` of its area).
        min_overlap: see ``min_changed``.
    """

    def __init__(self, radius_frac: float = 5.0, min_radius: int = 96, max_side: int = 320,
                 ratio: float = 2.0, area_range: tuple[float, float] = (0.3, 3.0),
                 change_thresh: float = 40.0, min_changed: float = 0.5, min_overlap: float = 0.3):
        if radius_frac <= 0 or min_radius <= 0 or max_side < 32 or ratio <= 0:
            raise ValueError("Reacquirer: radius_frac, min_radius and ratio must be > 0, max_side >= 32")
        lo, hi = area_range
        if not 0 < lo < hi:
            raise ValueError(f"Reacquirer: area_range must satisfy 0 < lo < hi, got {area_range}")
        self.radius_frac, self.min_radius, self.max_side = float(radius_frac), int(min_radius), int(max_side)
        self.ratio, self.area_range = float(ratio), (float(lo), float(hi))
        self.change_thresh, self.min_changed, self.min_overlap = float(change_thresh), float(min_changed), float(min_overlap)
        self._model: Optional[ColourModel] = None
        self._start_bgr: Optional[np.ndarray] = None
        self._ref_area = 0

    def start(self, image_bgr: np.ndarray, mask: np.ndarray) -> None:
        """Remember the object's appearance and the scene around it (``mask``: bool (H, W), non-empty)."""
        idx = hsv_bin_index(image_bgr)                                    # (H, W) bin per pixel
        obj = cv2.erode(mask.astype(np.uint8), _K3) > 0
        if obj.sum() < 10:
            obj = mask
        scene = ~(cv2.dilate(mask.astype(np.uint8), _K3, iterations=3) > 0)
        self._model = ColourModel()
        self._model.fit(idx[obj], idx[scene] if scene.any() else idx.ravel())
        self._start_bgr = image_bgr.copy()
        self._ref_area = int(mask.sum())

    def find(self, image_bgr: np.ndarray, last_place: np.ndarray) -> Optional[np.ndarray]:
        """The object's mask (bool (H, W)) in this frame, or ``None`` if no candidate qualifies.

        ``last_place``: bool (H, W), where the object was last confidently seen.
        """
        if self._model is None:
            raise RuntimeError("Reacquirer.find called before start()")
        H, W = image_bgr.shape[:2]
        ys, xs = np.nonzero(last_place)
        if xs.size == 0:
            return None
        cx, cy = float(xs.mean()), float(ys.mean())
        size = np.sqrt(max(self._ref_area, 1))
        r = max(self.min_radius, self.radius_frac * size)
        x1, y1 = max(0, int(cx - r)), max(0, int(cy - r))
        x2, y2 = min(W, int(cx + r) + 1), min(H, int(cy + r) + 1)
        rw, rh = x2 - x1, y2 - y1
        scale = min(1.0, self.max_side / max(rw, rh))
        sw, sh = max(8, int(round(rw * scale))), max(8, int(round(rh * scale)))

        def down(a, interp=cv2.INTER_AREA):
            a = np.ascontiguousarray(a[y1:y2, x1:x2])
            return a if (sw, sh) == (rw, rh) else cv2.resize(a, (sw, sh), interpolation=interp)

        cur = down(image_bgr)                                             # (sh, sw, 3)
        p_obj, p_scene = self._model.likelihoods(hsv_bin_index(cur))
        cand = cv2.morphologyEx((p_obj > self.ratio * p_scene).astype(np.uint8), cv2.MORPH_OPEN, _K3)
        changed = cv2.blur(cv2.absdiff(cur, down(self._start_bgr)), (3, 3)).max(axis=2) > self.change_thresh
        place = down(last_place.astype(np.float32), cv2.INTER_LINEAR) > 0.5
        n, labels, stats, cents = cv2.connectedComponentsWithStats(cand, connectivity=8)
        lo, hi = self.area_range
        best, best_d = None, np.inf
        for k in range(1, n):
            area_full = stats[k, cv2.CC_STAT_AREA] / scale ** 2
            if not lo * self._ref_area <= area_full <= hi * self._ref_area:
                continue
            comp = labels == k
            area = float(comp.sum())
            if (changed[comp].sum() < self.min_changed * area
                    and place[comp].sum() < self.min_overlap * area):
                continue  # an unmoved object of the same colour elsewhere: a distractor
            d = np.hypot(cents[k][0] / scale + x1 - cx, cents[k][1] / scale + y1 - cy)
            if d <= r and d < best_d:
                best, best_d = k, d
        if best is None:
            return None
        out = np.zeros((H, W), bool)
        comp = (labels == best).astype(np.float32)
        out[y1:y2, x1:x2] = (comp if (sw, sh) == (rw, rh)
                             else cv2.resize(comp, (rw, rh), interpolation=cv2.INTER_LINEAR)) > 0.5
        return fill_holes(out) if out.any() else None
