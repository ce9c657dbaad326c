"""Which object a planner answer means: matching a parsed description to the detected objects,
choosing the next target a hand can execute, and wording an instruction that names it.

Used by the task handlers (:mod:`planner.server.tasks`), the simulator's target choice
(:mod:`sim.targets`) and the dataset converter's mask from an instruction.
"""

from __future__ import annotations

import re
from typing import Optional

import cv2
import numpy as np

from planner.server.segmentation import DetectedObject, SceneAnalysis
from planner.server.vocab import ORDINAL_NAMES, ParsedText, colour_distance, parse_text
from planner.types import BBox

_AVOID = re.compile(r"^\s*-\s*avoid:\s*(.*?)\s+at box\s*\[\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\]"
                    r"\s*,\s*failed\s+(\d+)", re.IGNORECASE | re.MULTILINE)


def matches(obj: DetectedObject, parsed: ParsedText) -> bool:
    """Whether the object carries one of the text's colour names and one of its shape words."""
    if parsed.colours and obj.colour not in parsed.colours:
        return False
    if parsed.shapes and obj.shape not in parsed.shapes:
        return False
    return True


#: Largest weighted Lab distance (vocab.colour_distance) at which an object whose colour has another
#: name still counts as the colour a single-object prompt names (plural prompts such as "all the red
#: things" keep the exact colour names): tinted light turns a white cylinder light cyan (Lab
#: 97/-16/10, distance 19 from white) and a VLM still calls it white. Neighbouring palette colours
#: lie closer than this (yellow and orange objects ~25-30 apart), so objects named exactly alike
#: rank first (:func:`single`).
NEAR_COLOUR = 30.0


#: Second tier for single-object prompts when no object is within NEAR_COLOUR: shaded faces and
#: tinted light move rendered colours further (a navy prism in shadow reads Lab 2/6/-14, 42 from
#: navy; a magenta frustum 36-47 from magenta); unrelated colours are mostly farther.
FAR_COLOUR = 65.0


def nearest_colour(obj: DetectedObject, parsed: ParsedText) -> float:
    """Distance (vocab.colour_distance) from the object's colour to the nearest colour the text
    names (which must name one)."""
    return min(colour_distance(np.array(obj.lab), c) for c in parsed.colours)


def colour_gap(obj: DetectedObject, parsed: ParsedText) -> float:
    """Distance (vocab.colour_distance) from the object's colour to the nearest named colour; 0
    when the text names none or the object carries a named colour's name."""
    if not parsed.colours or obj.colour in parsed.colours:
        return 0.0
    return nearest_colour(obj, parsed)


def colour_limit(scene: SceneAnalysis, parsed: ParsedText) -> float:
    """:data:`NEAR_COLOUR`, or :data:`FAR_COLOUR` when no object's colour is that near."""
    if not parsed.colours or any(colour_gap(o, parsed) <= NEAR_COLOUR for o in scene.objects):
        return NEAR_COLOUR
    return FAR_COLOUR


def consistent(scene: SceneAnalysis, parsed: ParsedText, use_shape: Optional[bool] = None,
                limit: Optional[float] = None) -> list[DetectedObject]:
    """Objects a single-object description could mean: colour named alike or within ``limit``
    (default :func:`colour_limit`) of a named colour, and the named shape when ``use_shape``
    (default: when any of those objects has the named shape; shape naming is rough)."""
    limit = colour_limit(scene, parsed) if limit is None else limit
    pool = [o for o in scene.objects if colour_gap(o, parsed) <= limit]
    if use_shape is None:
        use_shape = bool(parsed.shapes) and any(o.shape in parsed.shapes for o in pool)
    return [o for o in pool if o.shape in parsed.shapes] if use_shape and parsed.shapes else pool


def single(scene: SceneAnalysis, parsed: ParsedText) -> list[DetectedObject]:
    """The one object a single-object description names ([] if none fits): among the consistent
    objects (:func:`consistent`) those named exactly alike first, then the position words
    ("leftmost", "second ... from the left", "in the middle") pick among them."""
    cands = consistent(scene, parsed)
    if not cands:
        return []
    ranks = [(not parsed.colours or o.colour in parsed.colours) + (not parsed.shapes or o.shape in parsed.shapes)
             - (nearest_colour(o, parsed) if parsed.colours else 0.0) / 100.0
             for o in cands]
    best = max(ranks)
    return [pick([o for o, r in zip(cands, ranks) if r >= best - 0.5], parsed, scene.width)]


def targets(scene: SceneAnalysis, parsed: ParsedText) -> list[DetectedObject]:
    """The objects a prompt asks for: all without colour or shape words, the one it names for a
    single-object prompt (:func:`single`), else those matching its words."""
    if not parsed.has_filter:
        return list(scene.objects)
    if parsed.single:
        return single(scene, parsed)
    if parsed.colours and parsed.shapes:
        # "red cubes" means red and cube-like; shape naming is rough, so fall back to colour only.
        both = [o for o in scene.objects if matches(o, parsed)]
        return both or [o for o in scene.objects if o.colour in parsed.colours]
    return [o for o in scene.objects if matches(o, parsed)]


def where(obj: DetectedObject, scene: SceneAnalysis) -> str:
    """The object's place in words: "on the left side of the table, near the front"."""
    side = {"left": "on the left side", "right": "on the right side", "middle": "in the middle"}
    text = side[obj.horizontal(scene.width)] + " of the table"
    depth = obj.depth(scene.height)
    if depth == "front":
        text += ", near the front"
    elif depth == "back":
        text += ", towards the back"
    return text


#: Reach: the object's centre lies on the table region the segmentation found, at least this
#: fraction of the image width inside its border (objects at or past the table's edge are out of
#: the arm's comfortable reach, and their outline is unreliable).
REACH_MARGIN = 0.03
#: Pixels per metre on the table at normalised image row y, for the nominal head camera (640 px
#: wide; projection of the simulator's table through it): 671 px/m at y = 0.394 (the far rim of the
#: arm's workspace), 923 px/m at y = 0.819 (the near rim), linear in between. A robot with another
#: camera pose needs its own figures (camera calibration, not something the planner learns).
TABLE_PX_PER_M = ((0.394, 671.0), (0.819, 923.0))
#: Widest object the open hand can close around (m): the thumb-to-fingertip span of a human-size
#: dexterous hand is ~10 cm; the simulator's objects are <= 58 mm wide.
HAND_APERTURE_M = 0.10


def in_reach(obj: DetectedObject, scene: SceneAnalysis) -> bool:
    """Whether the object's centre lies on the table region, :data:`REACH_MARGIN` inside it."""
    region = scene.table_region
    if region is None or not region.any():
        return True
    margin = max(1, int(REACH_MARGIN * scene.width))
    dist = cv2.distanceTransform(np.pad(region.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    x = min(max(int(round(obj.centroid[0])), 0), scene.width - 1)
    y = min(max(int(round(obj.centroid[1])), 0), scene.height - 1)
    return bool(dist[y, x] >= margin)


def width_m(obj: DetectedObject, scene: SceneAnalysis) -> float:
    """Estimated width (m) of the object across its narrow side: the short side of its outline's
    minimum-area rectangle over the table's pixel scale at the object's lowest row."""
    (y0, s0), (y1, s1) = TABLE_PX_PER_M
    y = obj.bbox[3] / scene.height
    px_per_m = (s0 + (y - y0) * (s1 - s0) / (y1 - y0)) * scene.width / 640.0
    pts = cv2.findNonZero(obj.mask.astype(np.uint8))
    if pts is None:
        return 0.0
    (_, _), (rw, rh), _ = cv2.minAreaRect(pts)
    return float(min(rw, rh)) / max(px_per_m, 1.0)


def graspable(obj: DetectedObject, scene: SceneAnalysis) -> bool:
    """In reach and narrow enough for the open hand (:data:`HAND_APERTURE_M`)."""
    return in_reach(obj, scene) and width_m(obj, scene) <= HAND_APERTURE_M


def failures_of(scene: SceneAnalysis, text: str) -> dict[int, int]:
    """Failed attempts per detected object (``DetectedObject.index``) from the prompt's
    ``- avoid: <label> at box [...], failed <n> time(s)`` lines.

    A failed grasp may have lifted and dropped the object far from its box, so position alone is
    not enough: among the objects of the label's colour (all objects if it names none), the only
    one is the failed object wherever it lies; with several, the one whose box overlaps the failed
    box (IoU > 0.2) or, failing that, the nearest within 3 box sizes (same shape word first)."""
    failures: dict[int, int] = {}
    for match in _AVOID.finditer(text or ""):
        label = parse_text(match.group(1))
        x1, y1, x2, y2 = (int(v) for v in match.group(2, 3, 4, 5))
        n = int(match.group(6))
        same = [o for o in scene.objects if not label.colours or o.colour in label.colours]
        if label.colours and len(same) == 1:
            failures[same[0].index] = failures.get(same[0].index, 0) + n
            continue
        failed = BBox(x1, y1, x2, y2)
        reach = 3.0 * max(failed.width, failed.height, 1)
        best, best_score = None, 0.0
        for obj in same:
            iou = BBox(*obj.bbox).iou(failed)
            dist = float(np.hypot(obj.centroid[0] - failed.center[0], obj.centroid[1] - failed.center[1]))
            score = 2.0 + iou if iou > 0.2 else max(0.0, 1.0 - dist / reach)
            if label.shapes and obj.shape in label.shapes:
                score += 0.5 if score > 0 else 0.0
            if score > best_score:
                best, best_score = obj, score
        if best is not None:
            failures[best.index] = failures.get(best.index, 0) + n
    return failures


def choose_next(scene: SceneAnalysis, candidates: list[DetectedObject], max_crowding: float = 0.1,
                failures: Optional[dict[int, int]] = None) -> Optional[DetectedObject]:
    """The rightmost candidate the hand can execute. Objects that failed before (``failures``,
    from :func:`failures_of`) are considered only when every candidate has failed, fewest failures
    first. Among the rest, in order of preference:

    1. graspable (:func:`graspable`: centre well inside the table region, narrow enough for the
       open hand) and not hemmed in (at most ``max_crowding`` of the ring around it taken by other
       objects or the robot);
    2. graspable;
    3. not hemmed in; 4. any candidate.

    In the simulator, picks with crowding >= 0.1 were grasped in 18 of 30 attempts against 263 of
    327 with a free ring."""
    if not candidates:
        return None
    if failures:
        fewest = min(failures.get(o.index, 0) for o in candidates)
        candidates = [o for o in candidates if failures.get(o.index, 0) == fewest]
    ordered = sorted(candidates, key=lambda o: -o.centroid[0])
    ok = [o for o in ordered if graspable(o, scene)]
    for tier in ([o for o in ok if o.crowding <= max_crowding], ok,
                 [o for o in ordered if o.crowding <= max_crowding]):
        if tier:
            return tier[0]
    return ordered[0]


def describe(obj: DetectedObject, scene: SceneAnalysis) -> str:
    """A grasp instruction naming colour, shape and position, unambiguous within the scene."""
    twins = sorted([o for o in scene.objects if o.colour == obj.colour and o.shape == obj.shape],
                   key=lambda o: -o.centroid[0])
    if len(twins) == 1:
        return f"Grasp the {obj.label} {where(obj, scene)}."
    rank = twins.index(obj) + 1
    if rank == 1:
        return f"Grasp the rightmost {obj.label}, {where(obj, scene)}."
    if rank == len(twins):
        return f"Grasp the leftmost {obj.label}, {where(obj, scene)}."
    return f"Grasp the {ORDINAL_NAMES.get(rank, str(rank) + 'th')} {obj.label} from the right, {where(obj, scene)}."


def locate(scene: SceneAnalysis, parsed: ParsedText) -> Optional[DetectedObject]:
    """The detected object that best fits a parsed instruction."""
    if not scene.objects:
        return None
    scores = []
    for obj in scene.objects:
        score = 0.0
        if parsed.colours:
            if obj.colour in parsed.colours:
                score += 3.0
            else:
                score += 1.5 * max(0.0, 1.0 - nearest_colour(obj, parsed) / 60.0)
        if parsed.shapes and obj.shape in parsed.shapes:
            score += 1.0
        scores.append(score)
    best = max(scores)
    return pick([o for o, s in zip(scene.objects, scores) if s >= best - 0.25], parsed, scene.width)


def pick(cands: list[DetectedObject], parsed: ParsedText, width: int) -> DetectedObject:
    """One of ``cands`` by the text's position words (ordinal, side, depth); the largest without."""
    if parsed.ordinal and parsed.ordinal_from:
        ordered = sorted(cands, key=lambda o: o.centroid[0], reverse=parsed.ordinal_from == "right")
        return ordered[min(parsed.ordinal, len(ordered)) - 1]
    if parsed.horizontal == "right":
        return max(cands, key=lambda o: o.centroid[0])
    if parsed.horizontal == "left":
        return min(cands, key=lambda o: o.centroid[0])
    if parsed.horizontal == "middle":
        return min(cands, key=lambda o: abs(o.centroid[0] - width / 2))
    if parsed.depth == "front":
        return max(cands, key=lambda o: o.centroid[1])
    if parsed.depth == "back":
        return min(cands, key=lambda o: o.centroid[1])
    return max(cands, key=lambda o: o.area)
