"""Classical table-top object segmentation for the offline planner.

Pipeline (``analyse_scene``):

1. Median-blur the BGR image and convert it to CIE Lab.
2. Table model: the dominant colour of the lower image part, plus up to two further modes
   that interleave with it (checkerboard tables). Each mode gets a quadratic colour field
   fitted over the image, which absorbs lighting gradients.
3. Table pixels are those close to a mode's field (lightness down-weighted); the table
   region is the convex hull of the largest table component.
4. Foreground = table region minus table pixels, cleaned with morphology; connected
   components filtered by size; components of two clearly different colours are split.
5. Low-chroma components touching the image or table border are taken as the robot arm.
6. Textured tables (gradient spots, lighting blotches) vary mostly along one colour direction:
   a component whose pixels are partly on the table's principal colour line (fitted on the
   dominant table mode) has those pixels removed, so a blotch merged with an object does not
   inflate its box. Thin strips (table edges, checker seams) are dropped.

Each object is named by colour (``vocab.name_colour``), shape (``shapes.shape_word``: outline
corners and aspect) and position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from planner.server.shapes import shape_word
from planner.server.vocab import name_colour

_L_W = 0.4  # lightness weight in table distances
#: An object's colour is the median of its pixels at or above this lightness percentile: the lit
#: faces. Frustums and prisms show more shaded side than lit top, so the brighter half named 618 of
#: 822 rendered objects right (seeds 500-529, four splits), the brightest 15 % 699, and 720 with
#: vocab's lit-face references (vocab.EXPOSURE_GAIN); on seeds 700-729 615 -> 717 of 800.
LIT_PERCENTILE = 85.0


@dataclass
class SegmentationParams:
    """Tunable thresholds (pixel values assume 640x480 images and scale with area)."""

    min_area: int = 90
    max_area_frac: float = 0.12
    min_threshold: float = 7.0
    mad_factor: float = 3.5
    arm_chroma: float = 11.0
    robot_gap: int = 24           # px: an achromatic piece this close to the robot is part of it
    split_hue_deg: float = 50.0    # two chromatic colour clusters this far apart in hue: two objects
    split_chroma: float = 15.0     # ... each at least this chromatic
    split_chromatic: float = 20.0  # a cluster this chromatic next to one at most
    split_achromatic: float = 8.0  # this chromatic (white, grey, black): two objects
    split_edge_contrast: float = 8.5  # ... meeting in a chroma step this sharp (Lab units per px)
    min_edge_contrast: float = 3.0
    min_side: int = 11            # px at 480 rows: thinner components are texture seams, not objects
    line_factor: float = 4.0      # table-line distance threshold: median + factor * MAD
    line_min_threshold: float = 5.0
    join_bar: float = 0.8         # seeds of one blob joined by a bar this long (x the smaller seed's
                                  # half-width) stay one object: a dumbbell, not two touching balls


@dataclass
class DetectedObject:
    """One segmented object in a head image."""

    index: int
    bbox: tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive)
    area: int
    centroid: tuple[float, float]
    lab: tuple[float, float, float]
    colour: str
    shape: str
    mask: np.ndarray = field(repr=False)
    crowding: float = 0.0  # fraction of the surrounding ring occupied by other objects / robot

    @property
    def chroma(self) -> float:
        """Colourfulness (Lab chroma) of the object's median colour."""
        return float(np.hypot(self.lab[1], self.lab[2]))

    def horizontal(self, width: int) -> str:
        """"left", "middle" or "right" by the object's centre in the image."""
        x = self.centroid[0] / width
        return "left" if x < 0.38 else ("right" if x > 0.62 else "middle")

    def depth(self, height: int) -> Optional[str]:
        """"back", "front" or None (middle) by the object's centre row."""
        y = self.centroid[1] / height
        return "back" if y < 0.42 else ("front" if y > 0.72 else None)

    @property
    def label(self) -> str:
        """Short name, e.g. ``red cube``."""
        return f"{self.colour} {self.shape}"


@dataclass
class SceneAnalysis:
    """Result of ``analyse_scene``."""

    objects: list[DetectedObject]
    table_mask: np.ndarray = field(repr=False)
    table_region: np.ndarray = field(repr=False)
    robot_mask: np.ndarray = field(repr=False)
    width: int = 640
    height: int = 480


def _design(xs: np.ndarray, ys: np.ndarray, w: int, h: int) -> np.ndarray:
    x = xs.astype(np.float32) / w - 0.5
    y = ys.astype(np.float32) / h - 0.5
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _fit_field(lab: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Least-squares quadratic colour field over the pixels of ``mask``; returns (H, W, 3)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) > 15000:
        pick = rng.choice(len(xs), 15000, replace=False)
        xs, ys = xs[pick], ys[pick]
    if len(xs) < 50:
        return np.broadcast_to(np.median(lab[mask], axis=0), lab.shape).astype(np.float32)
    coef, *_ = np.linalg.lstsq(_design(xs, ys, w, h), lab[ys, xs], rcond=None)
    gy, gx = np.mgrid[0:h, 0:w]
    return (_design(gx.ravel(), gy.ravel(), w, h) @ coef).reshape(h, w, 3).astype(np.float32)


def _distance(lab: np.ndarray, ref: np.ndarray) -> np.ndarray:
    d = lab - ref
    return np.sqrt(_L_W * _L_W * d[..., 0] ** 2 + d[..., 1] ** 2 + d[..., 2] ** 2)


class _TableLine:
    """Principal colour line of the dominant table mode in weighted Lab."""

    def __init__(self, lab: np.ndarray, member: np.ndarray, params: SegmentationParams,
                 rng: np.random.Generator) -> None:
        pix = lab[member]
        if len(pix) > 20000:
            pix = pix[rng.choice(len(pix), 20000, replace=False)]
        self.ok = len(pix) >= 200
        if not self.ok:
            return
        pix = pix * np.array([_L_W, 1.0, 1.0], np.float32)            # (n, 3)
        self.mean = pix.mean(axis=0)
        _, _, vt = np.linalg.svd(pix - self.mean, full_matrices=False)
        self.axis = vt[0]                                               # (3,) unit
        d = self._perp(pix)
        mad = float(np.median(np.abs(d - np.median(d))))
        self.threshold = max(params.line_min_threshold, float(np.median(d)) + params.line_factor * 1.4826 * mad)

    def _perp(self, pix_w: np.ndarray) -> np.ndarray:
        c = pix_w - self.mean
        along = c @ self.axis
        return np.linalg.norm(c - along[:, None] * self.axis[None], axis=1)

    def on_line(self, lab_pixels: np.ndarray) -> np.ndarray:
        """Bool per pixel (n, 3 Lab): colour lies on the table's colour line."""
        return self._perp(lab_pixels * np.array([_L_W, 1.0, 1.0], np.float32)) < self.threshold


def _strip_table_line(comp: np.ndarray, lab: np.ndarray, line: Optional[_TableLine],
                      min_area: int) -> list[np.ndarray]:
    """Remove a table-coloured blotch merged with objects; returns the remaining object masks."""
    if line is None or not line.ok:
        return [comp]
    ys, xs = np.nonzero(comp)
    on = line.on_line(lab[ys, xs])
    frac = float(on.mean())
    if not 0.1 < frac < 0.85:  # nothing to strip, or the object itself has the table's colour
        return [comp]
    rest = np.zeros(comp.shape, np.uint8)
    rest[ys[~on], xs[~on]] = 1
    rest = cv2.morphologyEx(rest, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    rest = cv2.morphologyEx(rest, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    n, lbl, stats, _ = cv2.connectedComponentsWithStats(rest, connectivity=8)
    parts = [(lbl == k) & comp for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= min_area]
    if not parts or sum(int(p.sum()) for p in parts) < 0.15 * len(ys):
        return [comp]
    return parts


def _split_touching(comp: np.ndarray, min_area: int, join_bar: float,
                    max_solidity: float = 0.93) -> list[np.ndarray]:
    """Split a non-convex component into touching objects (distance-transform seeds).

    Single primitives project to nearly convex blobs; two objects touching form a neck, which
    the distance transform turns into separate peaks. Seeds joined by a bar (see
    :func:`_bar_joined_groups`) stay together: one object of several parts, such as a dumbbell.
    """
    u8 = comp.astype(np.uint8)
    contours, _ = cv2.findContours(u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return [comp]
    hull_area = cv2.contourArea(cv2.convexHull(max(contours, key=cv2.contourArea)))
    if hull_area <= 0 or comp.sum() / hull_area > max_solidity:
        return [comp]
    dist = cv2.distanceTransform(u8, cv2.DIST_L2, 5)
    peaks = (dist > 0.55 * float(dist.max())).astype(np.uint8)
    n, markers = cv2.connectedComponents(peaks, connectivity=8)
    if n < 3:
        return [comp]
    # Each pixel goes to its nearest seed (labels of the zero-valued seed components).
    _, nearest = cv2.distanceTransformWithLabels((peaks == 0).astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_CCOMP)
    group = _bar_joined_groups(dist, markers, n, join_bar)
    parts = []
    for g in sorted(set(group.values())):
        part = np.zeros_like(comp)
        for k in range(1, n):
            if group[k] == g:
                ys, xs = np.nonzero(markers == k)
                part |= comp & (nearest == nearest[ys[0], xs[0]])
        parts.append(part)
    parts = [p for p in parts if p.sum() >= min_area]
    return parts if len(parts) >= 2 else [comp]


def _bar_joined_groups(dist: np.ndarray, markers: np.ndarray, n: int, join_bar: float) -> dict[int, int]:
    """Group the seeds (``markers`` labels 1..n-1) of one same-coloured component that a bar
    joins; returns seed label -> group label.

    ``dist`` is the component's distance transform (half-width at each pixel). Along the straight
    line between two seeds' widest points, two blobs that merely touch narrow to their contact
    and widen again at once (a V-shaped half-width profile); the balls of a dumbbell are joined
    by a bar, along which the half-width stays flat at its narrowest. Seeds whose profile stays
    within 6 % of the smaller seed's half-width ``r`` of its minimum for at least ``join_bar`` x
    ``r`` pixels, with a neck of at least ``r / 4``, are joined (transitively).
    """
    peak_pt, radius = {}, {}
    for k in range(1, n):
        ys, xs = np.nonzero(markers == k)
        i = int(np.argmax(dist[ys, xs]))
        peak_pt[k], radius[k] = (xs[i], ys[i]), float(dist[ys[i], xs[i]])
    parent = {k: k for k in range(1, n)}

    def root(k: int) -> int:
        while parent[k] != k:
            k = parent[k]
        return k

    for a in range(1, n):
        for b in range(a + 1, n):
            (xa, ya), (xb, yb) = peak_pt[a], peak_pt[b]
            length = float(np.hypot(xb - xa, yb - ya))
            steps = max(2, int(length) + 1)
            t = np.linspace(0.0, 1.0, steps)
            xs = np.round(xa + t * (xb - xa)).astype(int)
            ys = np.round(ya + t * (yb - ya)).astype(int)
            profile = dist[ys, xs]                       # half-width along the line
            r = min(radius[a], radius[b])
            neck = float(profile.min())
            # length (px) of the neck's flat stretch: long for a bar, a point for touching blobs
            flat = float((profile <= neck + 0.06 * r).sum()) * length / (steps - 1)
            if neck >= 0.25 * r and flat >= join_bar * r:
                parent[root(b)] = root(a)
    return {k: root(k) for k in range(1, n)}


def _table_modes(lab: np.ndarray, max_modes: int = 3) -> list[np.ndarray]:
    """Masks of the table colour modes (first = dominant)."""
    h, w = lab.shape[:2]
    sub = np.zeros((h, w), bool)
    sub[int(0.3 * h):, :] = True
    q = np.stack([lab[..., 0] / 10.0, (lab[..., 1] + 128) / 7.0, (lab[..., 2] + 128) / 7.0], -1).astype(np.int32)
    q = np.clip(q, 0, 63)
    keys = (q[..., 0] * 64 + q[..., 1]) * 64 + q[..., 2]
    remaining = sub.copy()
    modes: list[np.ndarray] = []
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (41, 41))
    for _ in range(max_modes):
        if remaining.sum() < 0.05 * sub.sum():
            break
        counts = np.bincount(keys[remaining], minlength=64 ** 3)
        top = int(np.argmax(counts))
        centre = np.median(lab[remaining & (keys == top)], axis=0)
        member = _distance(lab, centre) < 12.0
        share = (member & remaining).sum() / float(sub.sum())
        if modes:
            near_first = cv2.dilate(modes[0].astype(np.uint8), kernel).astype(bool)
            interleave = (member & near_first & sub).sum() / max(1.0, (member & sub).sum())
            if share < 0.1 or interleave < 0.6:
                break
        modes.append(member)
        remaining &= ~cv2.dilate(member.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return modes


def _split_component(lab: np.ndarray, comp: np.ndarray, params: SegmentationParams,
                     min_area: int) -> list[np.ndarray]:
    """Split a component of two touching objects of different colours: one 2-means split of its
    (a, b) chroma plane, or ``[comp]`` when the two clusters are not two objects' colours (one
    level only: on the development scenes a recursive split cut more single objects under
    coloured light than it separated further objects).

    Accepted: two clear hues (both chromatic, hue apart by ``split_hue_deg``), or one chromatic and
    one achromatic cluster (``split_chromatic`` vs ``split_achromatic`` chroma: a red cylinder
    under a white capsule). Shading changes lightness and chroma but hardly the hue, and it does
    not turn one face of a coloured object grey, so neither rule cuts a single object's faces;
    specular highlights are too small to reach the minimum share.
    """
    pix = lab[comp][:, 1:3].astype(np.float32)
    if len(pix) < 2 * min_area:
        return [comp]
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    _, labels, centres = cv2.kmeans(pix, 2, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    labels = labels.ravel()
    share = labels.mean()
    if not 0.2 < share < 0.8:
        return [comp]
    chroma = np.hypot(centres[:, 0], centres[:, 1])
    hue = np.degrees(np.arctan2(centres[:, 1], centres[:, 0]))
    dhue = abs((hue[0] - hue[1] + 180.0) % 360.0 - 180.0)
    two_hues = chroma.min() >= params.split_chroma and dhue >= params.split_hue_deg
    colour_and_grey = chroma.max() >= params.split_chromatic and chroma.min() <= params.split_achromatic
    if not (two_hues or colour_and_grey):
        return [comp]
    ys, xs = np.nonzero(comp)
    if colour_and_grey and not two_hues and \
            _interface_contrast(lab, comp, ys, xs, labels) < params.split_edge_contrast:
        return [comp]  # a smooth change of tint across one object (a white object under coloured light)
    parts = []
    for k in (0, 1):
        part = np.zeros(comp.shape, np.uint8)
        part[ys[labels == k], xs[labels == k]] = 1
        part = cv2.morphologyEx(part, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
        n, lbl, stats, _ = cv2.connectedComponentsWithStats(part, connectivity=8)
        if n > 1:
            biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            if stats[biggest, cv2.CC_STAT_AREA] >= min_area:
                parts.append(lbl == biggest)
    return parts if len(parts) == 2 else [comp]


def _interface_contrast(lab: np.ndarray, comp: np.ndarray, ys: np.ndarray, xs: np.ndarray,
                        labels: np.ndarray) -> float:
    """Median chroma gradient (Lab units per pixel) along the interface between the two colour
    clusters ``labels`` (0/1 per pixel ``ys, xs`` of ``comp``). Two touching objects meet in a sharp
    colour step; the shading or tint of a single object changes over many pixels."""
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = lab[y0:y1, x0:x1]
    ga = [cv2.Sobel(np.ascontiguousarray(crop[..., c]), cv2.CV_32F, dx, 1 - dx, ksize=3) / 8.0
          for c in (1, 2) for dx in (1, 0)]
    grad = np.sqrt(ga[0] ** 2 + ga[1] ** 2 + ga[2] ** 2 + ga[3] ** 2)
    one = np.zeros(crop.shape[:2], np.uint8)
    one[ys[labels == 1] - y0, xs[labels == 1] - x0] = 1
    inside = comp[y0:y1, x0:x1]
    kernel = np.ones((3, 3), np.uint8)
    interface = (cv2.dilate(one, kernel) > 0) & (cv2.dilate(1 - one, kernel) > 0) & inside
    interface &= cv2.erode(inside.astype(np.uint8), kernel) > 0  # not the outline against the table
    if not interface.any():
        return 0.0
    return float(np.median(grad[interface]))


def analyse_scene(bgr: np.ndarray, params: Optional[SegmentationParams] = None) -> SceneAnalysis:
    """Segment the objects on the table in a BGR head image."""
    params = params or SegmentationParams()
    h, w = bgr.shape[:2]
    scale = (h * w) / (480.0 * 640.0)
    min_area = max(12, int(params.min_area * scale))
    rng = np.random.default_rng(0)
    lab = cv2.cvtColor(cv2.medianBlur(bgr[..., :3], 5).astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)
    modes = _table_modes(lab)
    table = np.zeros((h, w), bool)
    line: Optional[_TableLine] = None
    for member in modes:
        fitted = _fit_field(lab, member, rng)
        for _ in range(2):
            dist = _distance(lab, fitted)
            d_in = dist[member]
            mad = float(np.median(np.abs(d_in - np.median(d_in)))) if d_in.size else 0.0
            thr = max(params.min_threshold, float(np.median(d_in)) + params.mad_factor * 1.4826 * mad)
            member = dist < thr
            fitted = _fit_field(lab, member, rng)
        if line is None:
            line = _TableLine(lab, member, params, rng)
        table |= _distance(lab, fitted) < thr
    # Table region: convex hull of the largest table component.
    closed = cv2.morphologyEx(table.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    n, lbl, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    region = np.zeros((h, w), np.uint8)
    if n > 1:
        biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        pts = cv2.findNonZero((lbl == biggest).astype(np.uint8))
        cv2.fillPoly(region, [cv2.convexHull(pts)], 1)
    gl = cv2.GaussianBlur(lab, (0, 0), 1.0)
    grad = np.zeros((h, w), np.float32)
    for c, wgt in ((0, _L_W), (1, 1.0), (2, 1.0)):
        gx = cv2.Sobel(gl[..., c], cv2.CV_32F, 1, 0, ksize=3) / 8.0
        gy = cv2.Sobel(gl[..., c], cv2.CV_32F, 0, 1, ksize=3) / 8.0
        grad = np.maximum(grad, wgt * np.hypot(gx, gy))
    grad = cv2.dilate(grad, np.ones((5, 5), np.uint8))
    fg = (region > 0) & ~table
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    n, lbl, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    region_edge = cv2.dilate(region, np.ones((5, 5), np.uint8)) - cv2.erode(region, np.ones((5, 5), np.uint8))
    robot = np.zeros((h, w), bool)
    comps: list[np.ndarray] = []
    for k in range(1, n):
        area = int(stats[k, cv2.CC_STAT_AREA])
        if area < min_area:
            continue
        comp = lbl == k
        med = np.median(lab[comp], axis=0)
        chroma = float(np.hypot(med[1], med[2]))
        x, y, bw, bh = stats[k, :4]
        at_border = x <= 1 or y <= 1 or x + bw >= w - 1 or y + bh >= h - 1
        at_edge = bool((region_edge[comp] > 0).mean() > 0.02)
        if area > params.max_area_frac * h * w or (chroma < params.arm_chroma and (at_border or at_edge)):
            robot |= comp
            continue
        if at_border:  # cut by the image border: not a graspable object in view
            continue
        if min(bw, bh) < params.min_side * np.sqrt(scale):  # a seam or table edge, not an object
            continue
        boundary = comp & ~cv2.erode(comp.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if float(grad[boundary].mean()) < params.min_edge_contrast:  # smooth blotch of table texture
            continue
        for part in _strip_table_line(comp, lab, line, min_area):
            for piece in _split_component(lab, part, params, min_area):
                comps.extend(_split_touching(piece, min_area, params.join_bar))
    objects: list[DetectedObject] = []
    # a finger hanging below the hand, cut off from it by table texture (a checkerboard), is a grey
    # piece next to the robot: achromatic pieces within robot_gap px of the robot are robot
    near_robot = cv2.dilate(robot.astype(np.uint8), np.ones((2 * params.robot_gap + 1,) * 2, np.uint8)) > 0
    for comp in comps:
        area = int(comp.sum())
        if area < min_area:
            continue
        pix = lab[comp]
        if (comp & near_robot).any() and float(np.hypot(*np.median(pix, axis=0)[1:])) < params.arm_chroma:
            robot |= comp
            continue
        ys, xs = np.nonzero(comp)
        # the lit faces name the colour best: the brightest 15 % of the object's pixels
        lit = pix[pix[:, 0] >= np.percentile(pix[:, 0], LIT_PERCENTILE)]
        med = np.median(lit, axis=0)
        mask_u8 = comp.astype(np.uint8)
        objects.append(DetectedObject(
            index=len(objects),
            bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
            area=area,
            centroid=(float(xs.mean()), float(ys.mean())),
            lab=(float(med[0]), float(med[1]), float(med[2])),
            colour=name_colour(med),
            shape=shape_word(mask_u8),
            mask=comp,
        ))
    _crowding(objects, robot, h, w)
    return SceneAnalysis(objects, table, region > 0, robot, w, h)


def _crowding(objects: list[DetectedObject], robot: np.ndarray, h: int, w: int) -> None:
    """Fraction of a ring around each object that other objects or the robot occupy."""
    occupancy = np.zeros((h, w), np.int32)
    for obj in objects:
        occupancy[obj.mask] = obj.index + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (25, 25))
    for obj in objects:
        ring = cv2.dilate(obj.mask.astype(np.uint8), kernel).astype(bool) & ~obj.mask
        if not ring.any():
            continue
        others = ((occupancy[ring] > 0) & (occupancy[ring] != obj.index + 1)) | robot[ring]
        obj.crowding = float(others.mean())
