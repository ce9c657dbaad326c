"""Box-prompted segmentation with OpenCV GrabCut (no weights needed)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .base import Segmenter, check_image, clip_box
from .masks import expand_box, keep_components

__all__ = ["GrabCutSegmenter", "fill_holes"]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the enclosed holes of a boolean mask."""
    m = mask.astype(np.uint8)
    h, w = m.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = m
    flood = pad.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return mask | holes


class GrabCutSegmenter(Segmenter):
    """GrabCut inside the box, initialised for loose (planner) boxes.

    The image is cropped to the box plus ``context`` of its size (the colour model of the
    background comes from there), downscaled so the crop's longer side is at most ``max_side``,
    and labelled: far outside the box = background; a thin ring just outside the box and a thin
    ring just inside its border = probable background (boxes may be slightly tight or loose);
    the rest of the box = probable foreground. After GrabCut, speckles are removed, only the
    components on the box's centre are kept and holes are filled. If GrabCut returns almost
    nothing, a colour-contrast (Otsu) fallback is used.

    Args:
        iterations: GrabCut iterations.
        context: background context around the box, as a fraction of the box size.
        max_side: longer side of the working crop in pixels (speed/accuracy trade-off).
        border_frac: width of the probable-background ring inside the box (fraction of size).
        min_area_frac: results smaller than this fraction of the box area trigger the fallback.
    """

    def __init__(self, iterations: int = 5, context: float = 0.35, max_side: int = 240,
                 border_frac: float = 0.06, min_area_frac: float = 0.05):
        if iterations < 1:
            raise ValueError("iterations must be >= 1")
        if max_side < 32:
            raise ValueError("max_side must be >= 32")
        self.iterations = int(iterations)
        self.context = float(context)
        self.max_side = int(max_side)
        self.border_frac = float(border_frac)
        self.min_area_frac = float(min_area_frac)

    def segment(self, image_bgr: np.ndarray, box_xyxy: Sequence[float]) -> np.ndarray:
        """Segment the object in ``box_xyxy``; see :meth:`Segmenter.segment`."""
        image = check_image(image_bgr)
        H, W = image.shape[:2]
        box = clip_box(box_xyxy, image.shape)
        bw, bh = box[2] - box[0], box[3] - box[1]
        roi = expand_box(box, image.shape, frac=self.context, pad=8)
        rx1, ry1, rx2, ry2 = roi
        crop = image[ry1:ry2, rx1:rx2]
        scale = min(1.0, self.max_side / max(crop.shape[:2]))
        if scale < 1.0:
            small = cv2.resize(crop, (max(8, round(crop.shape[1] * scale)), max(8, round(crop.shape[0] * scale))),
                               interpolation=cv2.INTER_AREA)
        else:
            small = crop
        sy, sx = small.shape[0] / crop.shape[0], small.shape[1] / crop.shape[1]
        # box in crop-scaled coordinates
        bx1, by1 = (box[0] - rx1) * sx, (box[1] - ry1) * sy
        bx2, by2 = (box[2] - rx1) * sx, (box[3] - ry1) * sy
        init = np.full(small.shape[:2], cv2.GC_BGD, np.uint8)

        def fill(x1, y1, x2, y2, val):
            h, w = init.shape
            x1, y1 = int(np.clip(round(x1), 0, w)), int(np.clip(round(y1), 0, h))
            x2, y2 = int(np.clip(round(x2), 0, w)), int(np.clip(round(y2), 0, h))
            init[y1:y2, x1:x2] = val

        ox, oy = max(1.0, 0.04 * (bx2 - bx1)), max(1.0, 0.04 * (by2 - by1))
        fill(bx1 - ox, by1 - oy, bx2 + ox, by2 + oy, cv2.GC_PR_BGD)
        ix, iy = self.border_frac * (bx2 - bx1), self.border_frac * (by2 - by1)
        fill(bx1 + ix, by1 + iy, bx2 - ix, by2 - iy, cv2.GC_PR_FGD)
        fg_small = self._grabcut(small, init)
        centre = np.zeros(init.shape, bool)
        cx, cy, hw, hh = (bx1 + bx2) / 2, (by1 + by2) / 2, (bx2 - bx1) / 4, (by2 - by1) / 4
        centre[int(cy - hh):int(np.ceil(cy + hh)) + 1, int(cx - hw):int(np.ceil(cx + hw)) + 1] = True
        if fg_small.any():
            fg_small = keep_components(fg_small, anchor=centre, min_anchor_frac=0.02, min_rel_area=0.05)
            fg_small = fill_holes(fg_small)
        if fg_small.sum() < self.min_area_frac * (bx2 - bx1) * (by2 - by1):
            fg_small = self._contrast_fallback(small, init, centre)
        # upsample with smooth edges
        if scale < 1.0:
            soft = cv2.resize(fg_small.astype(np.float32), (crop.shape[1], crop.shape[0]),
                              interpolation=cv2.INTER_LINEAR)
            fg = soft > 0.5
        else:
            fg = fg_small
        out = np.zeros((H, W), bool)
        out[ry1:ry2, rx1:rx2] = fg
        # the object cannot extend far beyond the (slightly grown) box
        keep = np.zeros((H, W), bool)
        kx1, ky1, kx2, ky2 = expand_box(box, image.shape, frac=0.05, pad=2)
        keep[ky1:ky2, kx1:kx2] = True
        return out & keep

    def _grabcut(self, img: np.ndarray, init: np.ndarray) -> np.ndarray:
        if not np.any((init == cv2.GC_PR_FGD) | (init == cv2.GC_FGD)):
            return np.zeros(init.shape, bool)
        mask = init.copy()
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(img, mask, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:
            return np.zeros(init.shape, bool)  # e.g. too few samples of one class
        fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
        fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
        return fg

    @staticmethod
    def _contrast_fallback(img: np.ndarray, init: np.ndarray, centre: np.ndarray) -> np.ndarray:
        """Pixels in the box whose Lab colour differs most from the surrounding background."""
        lab = cv2.cvtColor(img, cv2.COLOR_BGR2LAB).astype(np.float32)
        bg = init == cv2.GC_BGD
        inside = init != cv2.GC_BGD
        if not bg.any():
            return centre & inside
        ref = np.median(lab[bg], axis=0)
        dist = np.linalg.norm(lab - ref, axis=2)
        d8 = np.clip(dist * (255.0 / max(1e-6, dist[inside].max())), 0, 255).astype(np.uint8)
        vals = d8[inside].reshape(-1, 1)
        thr, _ = cv2.threshold(vals, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        fg = (d8 > thr) & inside
        if not fg.any():
            return centre & inside
        return fill_holes(keep_components(fg, anchor=centre, min_anchor_frac=0.02))
