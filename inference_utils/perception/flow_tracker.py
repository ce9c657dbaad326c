"""Mask tracking without learned weights: optical flow + adaptive colour model + shape prior."""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from .base import MaskTracker, check_image, check_mask
from .colour_model import ColourModel, hsv_bin_index
from .grabcut import fill_holes
from .masks import expand_box, keep_components, mask_iou, mask_to_box
from .reacquire import Reacquirer

__all__ = ["FlowTracker"]

_K3 = np.ones((3, 3), np.uint8)


_MIN_ROI = 64   # px: smallest full-resolution search region (grown around its centre)
_MIN_WORK = 48  # px: smallest side of the working image handed to the DIS optical flow


def _at_least(roi, side: int, w: int, h: int) -> tuple[int, int, int, int]:
    """Grow ``roi`` (x1, y1, x2, y2) to at least ``side`` pixels per dimension inside a w x h image."""
    x1, y1, x2, y2 = roi

    def grow(a, b, limit):
        target = min(side, limit)
        if b - a >= target:
            return a, b
        a = min(max(0, int(round((a + b - target) / 2))), limit - target)
        return a, a + target

    x1, x2 = grow(x1, x2, w)
    y1, y2 = grow(y1, y2, h)
    return x1, y1, x2, y2


class FlowTracker(MaskTracker):
    """Track an object mask through frames with no network weights.

    Each frame is processed inside a region of interest around the object, downscaled so its
    longer side is at most ``max_roi_side`` pixels (which bounds the latency):

    1. **Motion** — dense DIS optical flow from the previous to the current frame; the object's
       shift is the median flow over its previously visible pixels (over the remembered full
       shape when it is hidden, i.e. it follows the hand that carries it), unless "no motion"
       explains those pixels as well (a hand sweeping over a resting object).
    2. **Shape prior** — the remembered full object shape (visible part plus parts hidden by
       the hand) is shifted by that motion and turned into a soft per-pixel prior.
    3. **Colour** — adaptive HSV histograms of the object and of its surroundings (the table,
       and the hand as soon as it enters the region) give per-pixel likelihoods; the posterior
       ``> 0.5`` is the visible mask, so occluding hand pixels are excluded. Visible pixels
       whose appearance suddenly changes (after motion compensation) get a low prior, and while
       the object rests, nothing that newly appears outside its shape can join it.
    4. **Re-segmentation** — every ``reseg_every`` frames (0 = never), while the object is
       mostly visible, GrabCut refines the mask inside the tracked box and the colour model is
       refreshed from it; this removes slow drift.
    5. **Re-acquisition** — when the visible mask has stayed below ``lost_frac`` of the object's
       reference area for ``lost_patience`` frames (the hand pushed it away faster than the flow
       followed), a :class:`~.reacquire.Reacquirer` searches around the last confident position
       for a region with the object's start colours and size that has moved since the start,
       and tracking resumes from it.

    Args:
        reseg_every: frames between GrabCut re-segmentations (0 disables it).
        max_roi_side: longer side (pixels) of the working region after downscaling.
        margin: search margin around the object, as a fraction of its size.
        prior_in / prior_out: prior object probability well inside / far outside the shape.
        prior_width: softness (working pixels) of the prior at the shape's boundary.
        fg_rate / bg_rate: colour-model learning rates per frame.
        min_margin: minimum search margin in pixels.
        near_frac: object-coloured blobs within this fraction of the object's size from the
            remembered shape are kept (pieces split off by a finger).
        change_thresh: colour change (0..255, after motion compensation) that marks a pixel as
            changed; 0 disables the temporal-consistency cue.
        prior_occ: prior for previously visible object pixels whose appearance changed.
        prior_keep: prior for previously visible pixels whose appearance did not change.
        occ_rate: learning rate of the occluder colour model (colours that newly appear beside
            the resting object, i.e. the hand).
        reacquire: enable step 5 (re-finding a lost object).
        lost_frac / lost_patience: the object counts as lost once its visible area stays below
            ``lost_frac`` of the reference area for ``lost_patience`` consecutive frames.
    """

    def __init__(self, reseg_every: int = 10, max_roi_side: int = 160, margin: float = 0.6,
                 prior_in: float = 0.9, prior_out: float = 0.02, prior_width: float = 1.5,
                 fg_rate: float = 0.05, bg_rate: float = 0.2, min_margin: int = 16,
                 near_frac: float = 0.15, change_thresh: float = 30.0, prior_occ: float = 0.15,
                 occ_rate: float = 0.3, prior_keep: float = 0.98, reacquire: bool = True,
                 lost_frac: float = 0.15, lost_patience: int = 2):
        if reseg_every < 0:
            raise ValueError("reseg_every must be >= 0 (0 disables re-segmentation)")
        if max_roi_side < 48:
            raise ValueError("max_roi_side must be >= 48")
        if not 0.0 < prior_out < prior_in < 1.0:
            raise ValueError("need 0 < prior_out < prior_in < 1")
        self.reseg_every = int(reseg_every)
        self.max_roi_side = int(max_roi_side)
        self.margin = float(margin)
        self.min_margin = int(min_margin)
        self.prior_in, self.prior_out, self.prior_width = float(prior_in), float(prior_out), float(prior_width)
        self.fg_rate, self.bg_rate = float(fg_rate), float(bg_rate)
        self.near_frac = float(near_frac)
        self.change_thresh, self.prior_occ = float(change_thresh), float(prior_occ)
        self.occ_rate = float(occ_rate)
        self.prior_keep = float(prior_keep)
        if not 0.0 < lost_frac < 1.0 or lost_patience < 1:
            raise ValueError("need 0 < lost_frac < 1 and lost_patience >= 1")
        self.lost_frac, self.lost_patience = float(lost_frac), int(lost_patience)
        self._reacquirer = Reacquirer() if reacquire else None
        self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the current object."""
        self._colour = ColourModel()
        self._prev_gray: Optional[np.ndarray] = None
        self._prev_bgr: Optional[np.ndarray] = None
        self._shape: Optional[np.ndarray] = None  # remembered full extent (bool, full res)
        self._visible: Optional[np.ndarray] = None  # last output
        self._ref_area = 0
        self._frame = 0
        self._lost = 0            # consecutive frames with (almost) nothing visible
        self._last_seen: Optional[np.ndarray] = None  # last mask with >= half the reference area
        #: frames at which the object was re-acquired after being lost (diagnostics)
        self.reacquired_at: list[int] = []

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has been called since the last :meth:`reset`."""
        return self._shape is not None

    def start(self, image_bgr: np.ndarray, mask: np.ndarray) -> None:
        """Initialise from a frame and the object's (non-empty) mask in it."""
        image = check_image(image_bgr)
        mask = check_mask(mask, image.shape)
        if not mask.any():
            raise ValueError("FlowTracker.start needs a non-empty mask")
        self.reset()
        box = mask_to_box(mask)
        roi = expand_box(box, image.shape, frac=1.0, pad=self.min_margin)
        x1, y1, x2, y2 = roi
        idx = hsv_bin_index(image[y1:y2, x1:x2])
        m = mask[y1:y2, x1:x2]
        ring = ~(cv2.dilate(m.astype(np.uint8), _K3, iterations=3) > 0)
        if not ring.any():  # the mask fills the whole image
            ring = ~m
        self._colour.fit(idx[m], idx[ring] if ring.any() else idx.ravel())
        self._shape = fill_holes(mask)
        self._visible = mask.copy()
        self._ref_area = int(self._shape.sum())
        self._prev_gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        self._prev_bgr = image.copy()
        self._last_seen = mask.copy()
        if self._reacquirer is not None:
            self._reacquirer.start(image, mask)

    # ------------------------------------------------------------------ tracking
    def track(self, image_bgr: np.ndarray) -> np.ndarray:
        """Return the object's visible mask (bool, (H, W)) in this frame."""
        if not self.started:
            raise RuntimeError("FlowTracker.track called before start(image, mask)")
        image = check_image(image_bgr)
        if image.shape[:2] != self._shape.shape:
            raise ValueError(f"frame size {image.shape[:2]} differs from the start frame {self._shape.shape}")
        H, W = image.shape[:2]
        self._frame += 1
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)

        box = mask_to_box(self._shape)
        roi = expand_box(box, image.shape, frac=self.margin, pad=self.min_margin)
        x1, y1, x2, y2 = _at_least(roi, _MIN_ROI, W, H)
        rw, rh = x2 - x1, y2 - y1
        scale = min(1.0, self.max_roi_side / max(rw, rh))
        # OpenCV's DIS flow crashes (segfault) on very small images: keep both sides >= _MIN_WORK
        sw, sh = max(_MIN_WORK, int(round(rw * scale))), max(_MIN_WORK, int(round(rh * scale)))

        def down(a, interp=cv2.INTER_AREA):
            a = a[y1:y2, x1:x2]
            if (sw, sh) == (rw, rh):
                return np.ascontiguousarray(a)
            return cv2.resize(a, (sw, sh), interpolation=interp)

        cur_bgr = down(image)
        cur_g, prev_g = down(gray), down(self._prev_gray)
        shape0 = down(self._shape.astype(np.float32), cv2.INTER_LINEAR) > 0.5
        vis0 = down(self._visible.astype(np.float32), cv2.INTER_LINEAR) > 0.5

        # 1. motion from dense flow, robust median over the object's pixels
        flow = self._flow.calc(prev_g, cur_g, None)
        support = cv2.erode(vis0.astype(np.uint8), _K3) > 0
        if support.sum() < 15:
            support = vis0 if vis0.sum() >= 15 else shape0
        dx = dy = 0.0
        if support.any():
            mdx, mdy = np.median(flow[support], axis=0)
            if abs(mdx) + abs(mdy) > 0.3 and not self._static_fits_better(prev_g, cur_g, support, mdx, mdy):
                dx, dy = mdx, mdy
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        shape_w = cv2.warpAffine(shape0.astype(np.float32), shift, (sw, sh), flags=cv2.INTER_LINEAR) > 0.5

        # 2. soft shape prior from the signed distance to the shifted shape
        s8 = shape_w.astype(np.uint8)
        sd = cv2.distanceTransform(s8, cv2.DIST_L2, 3) - cv2.distanceTransform(1 - s8, cv2.DIST_L2, 3)
        prior = self.prior_out + (self.prior_in - self.prior_out) / (1.0 + np.exp(-(sd + 1.0) / self.prior_width))
        intruder = None
        if self.change_thresh > 0:
            # temporal consistency after motion compensation: a visible object pixel whose
            # appearance suddenly changed was probably just covered by the hand, one that did
            # not change is probably still the object (this matters when object and hand have
            # similar colours; otherwise the colour model decides)
            prev_w = cv2.warpAffine(down(self._prev_bgr), shift, (sw, sh), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
            diff = cv2.blur(cv2.absdiff(cur_bgr, prev_w), (3, 3)).max(axis=2)
            vis_w = cv2.warpAffine(vis0.astype(np.float32), shift, (sw, sh), flags=cv2.INTER_LINEAR) > 0.5
            changed = diff > self.change_thresh
            prior = np.where(vis_w & changed, np.minimum(prior, self.prior_occ),
                             np.where(vis_w, np.maximum(prior, self.prior_keep), prior))
            if dx == 0.0 and dy == 0.0:
                # a resting object does not spread: whatever newly appears next to it (the hand)
                # is not part of it; its colours feed the occluder model
                intruder = changed & ~shape_w
                prior = np.where(intruder, np.minimum(prior, 1e-3), prior)

        # 3. colour posterior
        idx = hsv_bin_index(cur_bgr)
        if intruder is not None:
            self._colour.update(occ_idx=idx[intruder], occ_rate=self.occ_rate)
        p_fg, p_bg = self._colour.likelihoods(idx)
        num = prior * p_fg
        post = num / (num + (1.0 - prior) * p_bg + 1e-12)
        vis = cv2.morphologyEx((post > 0.5).astype(np.uint8), cv2.MORPH_OPEN, _K3) > 0
        if vis.any():
            # pieces split off by a finger lie just beside the remembered shape: keep them too
            r = max(2, int(round(self.near_frac * np.sqrt(max(1, shape_w.sum())))))
            near = cv2.dilate(s8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0
            vis = keep_components(vis, anchor=near, min_anchor_frac=0.3, min_rel_area=0.05)

        # 4. periodic re-segmentation while the object is mostly visible
        shape_area = max(1, int(shape_w.sum()))
        ratio = vis.sum() / shape_area
        if self.reseg_every and self._frame % self.reseg_every == 0 and ratio > 0.6:
            refined = self._regrabcut(cur_bgr, vis, shape_w)
            if refined is not None:
                vis = refined
                post = np.where(vis, 1.0, 0.0).astype(np.float32)
                ratio = vis.sum() / shape_area

        # update the remembered shape: replace when the object is (almost) fully visible,
        # otherwise keep what is hidden and add what is newly seen
        if ratio >= 0.85 or shape_area * scale ** -2 > 2.5 * self._ref_area:
            shape_new = fill_holes(vis) if vis.any() else shape_w
        else:
            shape_new = shape_w | vis

        # colour model adaptation
        bg_sel = ~(cv2.dilate(shape_new.astype(np.uint8), _K3, iterations=2) > 0)
        fg_sel = (cv2.erode(vis.astype(np.uint8), _K3) > 0) if ratio > 0.5 else None
        self._colour.update(idx[fg_sel] if fg_sel is not None else None, idx[bg_sel],
                            fg_rate=self.fg_rate, bg_rate=self.bg_rate)

        # back to full resolution
        out = np.zeros((H, W), bool)
        shape_full = np.zeros((H, W), bool)
        if (sw, sh) == (rw, rh):
            out[y1:y2, x1:x2] = vis
            shape_full[y1:y2, x1:x2] = shape_new
        else:
            keep = cv2.dilate(vis.astype(np.uint8), _K3) > 0
            soft = cv2.resize(np.where(keep, post, 0).astype(np.float32), (rw, rh), interpolation=cv2.INTER_LINEAR)
            out[y1:y2, x1:x2] = soft > 0.5
            shape_full[y1:y2, x1:x2] = cv2.resize(shape_new.astype(np.float32), (rw, rh),
                                                  interpolation=cv2.INTER_LINEAR) > 0.5
        if shape_full.any():
            self._shape = shape_full
        out = self._check_lost(image, out)
        self._visible = out
        self._prev_gray = gray
        self._prev_bgr = image.copy()  # the caller may reuse its frame buffer
        return out.copy()

    def _check_lost(self, image: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Step 5: count lost frames and, once lost, try to re-acquire; returns the mask to report."""
        area = int(out.sum())
        if area >= 0.5 * self._ref_area:
            self._last_seen = out
        self._lost = self._lost + 1 if area < self.lost_frac * self._ref_area else 0
        if self._reacquirer is None or self._lost < self.lost_patience:
            return out
        found = self._reacquirer.find(image, self._last_seen)
        if found is None:
            return out
        self._shape, self._last_seen, self._lost = found, found, 0  # find() returns it hole-free
        self.reacquired_at.append(self._frame)
        idx = hsv_bin_index(image)
        ring = (cv2.dilate(found.astype(np.uint8), _K3, iterations=6) > 0) & ~(
            cv2.dilate(found.astype(np.uint8), _K3, iterations=2) > 0)
        self._colour.update(idx[found], idx[ring], fg_rate=0.5, bg_rate=0.5)
        return found

    @staticmethod
    def _static_fits_better(prev_g, cur_g, support, dx, dy) -> bool:
        """Whether 'no motion' explains the object's pixels at least as well as the flow shift.

        Guards against a moving hand dragging the flow median while the object stays put.
        """
        h, w = cur_g.shape
        back = cv2.warpAffine(cur_g, np.float32([[1, 0, -dx], [0, 1, -dy]]), (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        ref = prev_g[support].astype(np.float32)
        err_static = np.minimum(np.abs(cur_g[support].astype(np.float32) - ref), 60.0).mean()
        err_moved = np.minimum(np.abs(back[support].astype(np.float32) - ref), 60.0).mean()
        return err_static <= 1.25 * err_moved + 0.5

    def _regrabcut(self, img: np.ndarray, vis: np.ndarray, shape: np.ndarray) -> Optional[np.ndarray]:
        """GrabCut seeded with the tracked mask; ``None`` if it disagrees too much with it."""
        init = np.full(vis.shape, cv2.GC_BGD, np.uint8)
        near = cv2.dilate((shape | vis).astype(np.uint8), _K3, iterations=4) > 0
        init[near] = cv2.GC_PR_BGD
        init[vis] = cv2.GC_PR_FGD
        init[cv2.erode(vis.astype(np.uint8), _K3, iterations=2) > 0] = cv2.GC_FGD
        if not (init == cv2.GC_BGD).any():
            return None
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(img, init, None, bgd, fgd, 2, cv2.GC_INIT_WITH_MASK)
        except cv2.error:
            return None
        ref = (init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)
        ref = cv2.morphologyEx(ref.astype(np.uint8), cv2.MORPH_OPEN, _K3) > 0
        if not ref.any():
            return None
        ref = keep_components(ref, anchor=shape, min_anchor_frac=0.3, min_rel_area=0.05)
        return ref if mask_iou(ref, vis) > 0.6 else None
