"""What the wrist camera sees in the hand: the offline verifier's image measurements.

After the lift the wrist camera looks down past the palm; a held object sits between the
fingertips, so its image region starts in the upper part of the view, near the image's centre
line. Objects still lying on the table appear lower and smaller. Each function returns the area
of the largest qualifying region as a fraction of the whole image (0 when there is none).

Measured on 430 logged first verifications of the runtime (seeds 100000-100049, four splits,
default and rolling-friction physics, simulator truth = the target is >= 5 cm up when the attempt
ends): naming the colour by hue instead of by nearest palette entry, only near the palm and not
table-coloured, cut false "not held" answers from 31 to 19 and false "held" answers from 22 to 14.
Counting a held object's shaded faces (darker than the table, lighter than the hand) took the
false "not held" answers to 17 (21 on 431 later attempts not used for tuning, from 24), with no
new false "held" answer (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from planner.server.vocab import ACHROMATIC, PALETTE_LAB, PALETTE_NAMES

_SIZE = (160, 120)              # analysis resolution (width, height)
HUE_TOLERANCE_DEG = 25.0        # a shaded side keeps its hue: navy reads as blue, dark green as lime
MIN_CHROMA = 15.0               # below this a pixel has no reliable hue
PALM_TOP = 0.35                 # a held object's region starts above this fraction of the height
PALM_COLUMNS = (0.2, 0.8)       # ... and is centred between these fractions of the width
TABLE_GAP = 12.0                # weighted Lab distance beyond which a pixel is not the table
SHADED_GAP = 12.0               # a shaded face of a held object: this much darker than the table...
SHADED_MIN_L = 45.0             # ...and lighter than this (the black hand and its shaded fingers: L <= 35)
MAX_HELD = 0.4                  # larger regions are the table: held objects filled <= 8 % of the view,
                                # same-hue tables >= 64 % (logged runs above)


def _lab(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> (120, 160, 3) float32 CIE Lab of a median-filtered thumbnail."""
    small = cv2.resize(bgr[..., :3], _SIZE, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(cv2.medianBlur(small, 3).astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)


def _far_from(lab: np.ndarray, ref_lab: np.ndarray) -> np.ndarray:
    """(h, w) bool: pixels more than ``TABLE_GAP`` from ``ref_lab`` (lightness weighted 0.4)."""
    dt = lab - ref_lab[None, None]
    return np.sqrt(0.16 * dt[..., 0] ** 2 + dt[..., 1] ** 2 + dt[..., 2] ** 2) > TABLE_GAP


def _named_mask(lab: np.ndarray, colour: str) -> np.ndarray:
    """(h, w) bool: pixels of ``colour``. Chromatic colours by hue angle (any shade of it);
    white/grey/black by nearest palette entry among the achromatic ones (vocab's naming rule,
    vectorised)."""
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    if colour not in ACHROMATIC:
        ref = PALETTE_LAB[PALETTE_NAMES.index(colour)]
        hue_ref = np.degrees(np.arctan2(ref[2], ref[1]))
        hue = np.degrees(np.arctan2(lab[..., 2], lab[..., 1]))
        gap = np.abs((hue - hue_ref + 180.0) % 360.0 - 180.0)
        return (chroma > MIN_CHROMA) & (gap < HUE_TOLERANCE_DEG)
    diff = lab[..., None, :] - PALETTE_LAB[None, None]                 # (h, w, P, 3)
    diff[..., 0] *= 0.45
    dist = np.sqrt((diff ** 2).sum(-1))
    achro = np.array([n in ACHROMATIC for n in PALETTE_NAMES])
    dist = np.where((chroma > 18)[..., None] & achro[None, None], np.inf, dist)
    dist = np.where((chroma < 8)[..., None] & ~achro[None, None], np.inf, dist)
    return np.argmin(dist, -1) == PALETTE_NAMES.index(colour)


def palm_colour_fraction(wrist_bgr: np.ndarray, colour: str,
                         exclude_lab: Optional[np.ndarray] = None) -> float:
    """Largest region of ``colour`` that sits at the palm (starts in the upper ``PALM_TOP`` of the
    wrist view, centred between ``PALM_COLUMNS``, at most ``MAX_HELD`` of the view) and is not
    table-coloured. The table: for white/grey/black ``exclude_lab`` (the head camera's table
    colour); for chromatic colours the median of the wrist view's bottom rows, below any held
    object (the head camera's colour also removed brown objects on wooden tables)."""
    if colour not in PALETTE_NAMES:
        raise ValueError(f"unknown colour {colour!r}; expected one of {PALETTE_NAMES}")
    lab = _lab(wrist_bgr)
    mask = _named_mask(lab, colour)
    table = (exclude_lab if colour in ACHROMATIC
             else np.median(lab[-lab.shape[0] // 6:].reshape(-1, 3), axis=0))
    if table is not None:
        mask &= _far_from(lab, table)
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    height, width = mask.shape
    best = 0
    for k in range(1, n):
        x, y, w, _, area = stats[k]
        centre = (x + w / 2) / width
        if (y / height < PALM_TOP and PALM_COLUMNS[0] < centre < PALM_COLUMNS[1]
                and area <= MAX_HELD * mask.size):
            best = max(best, int(area))
    return best / mask.size


def head_table_lab(head_bgr: np.ndarray, table_mask: np.ndarray) -> Optional[np.ndarray]:
    """(3,) CIE Lab median of the head image over ``table_mask`` (H, W bool), or None when the
    table was not found: the achromatic table colour that the wrist measurements leave out."""
    if not table_mask.any():
        return None
    lab = cv2.cvtColor(head_bgr[..., :3].astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)
    return np.median(lab[table_mask], axis=0)


def coloured_fraction(bgr: np.ndarray, exclude_lab: Optional[np.ndarray] = None) -> float:
    """Largest clearly coloured region (chroma > 20) anywhere in the image, table-like pixels
    excluded: the check when the instruction names no colour."""
    lab = _lab(bgr)
    mask = np.hypot(lab[..., 1], lab[..., 2]) > 20
    if exclude_lab is not None:
        mask &= _far_from(lab, exclude_lab)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return 0.0 if n <= 1 else float(stats[1:, cv2.CC_STAT_AREA].max()) / mask.size


def held_object_fraction(wrist_bgr: np.ndarray, table_lab: Optional[np.ndarray]) -> float:
    """Largest region between the fingers (central part of the wrist view) that is neither table-
    coloured nor the dark hand: catches held objects whose colour name is unreliable (white,
    grey) or that the colour palette confuses."""
    if table_lab is None:
        return 0.0
    lab = _lab(wrist_bgr)
    dl = lab[..., 0] - table_lab[0]
    dab = np.hypot(lab[..., 1] - table_lab[1], lab[..., 2] - table_lab[2])
    # brighter or differently coloured than the table, not the dark hand; or a shaded face: clearly
    # darker than the table but far lighter than the hand
    mask = (((dl > 8) | (dab > 12)) & (lab[..., 0] > 35)) | ((dl < -SHADED_GAP) & (lab[..., 0] > SHADED_MIN_L))
    region = np.zeros_like(mask)
    region[: int(0.75 * mask.shape[0]), int(0.2 * mask.shape[1]): int(0.8 * mask.shape[1])] = True
    mask &= region
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return 0.0 if n <= 1 else float(stats[1:, cv2.CC_STAT_AREA].max()) / mask.size
