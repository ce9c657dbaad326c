"""Which object an episode grasps: the scene's designated target, a random one, or the planner's pick.

The scene generator designates one target and places it clear of the workspace rim with a free ring
around it. A planner following the DexGraspVLA prompt ("prefer objects on the right ... avoid
blocked ones") seldom asks for that object, so demonstrations on the designated target alone
leave the controller unprepared for the objects the full hierarchy actually asks it to grasp.
``"planner"`` runs the offline planner's own choice (classical vision on the head image, the
rightmost object that is not hemmed in) and designates the simulator object its box matches.
"""
from __future__ import annotations

import numpy as np

#: How :func:`sim.expert.run_expert_episode` picks the object to grasp.
TARGET_CHOICES = ("scene", "random", "planner")


def box_iou(a, b) -> float:
    """IoU of two boxes ``[x1, y1, x2, y2]`` (pixels, exclusive corners)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def planner_choice(head_bgr: np.ndarray, objects: list[dict], min_iou: float = 0.3) -> int | None:
    """Index of the simulator object the offline planner would ask for first, or None.

    head_bgr: (H, W, 3) uint8 head image; objects: ``info["objects"]`` of the environment (each with
    ``bbox_head``, None when not visible). The planner's box is matched to the object of highest
    box IoU; below ``min_iou`` (nothing segmented, or a box straddling objects) the result is None.
    """
    from planner.server.segmentation import analyse_scene
    from planner.server.choice import choose_next
    scene = analyse_scene(head_bgr)
    chosen = choose_next(scene, list(scene.objects))
    if chosen is None:
        return None
    ious = [box_iou(chosen.bbox, o["bbox_head"]) if o.get("bbox_head") is not None else 0.0 for o in objects]
    best = int(np.argmax(ious)) if ious else 0
    return best if ious and ious[best] >= min_iou else None


def pick_target(env, info: dict, mode: str, seed: int) -> int:
    """Object index to grasp in a freshly reset ``env`` under ``mode`` (see :data:`TARGET_CHOICES`).

    ``"planner"`` falls back to the designated target when the planner's box matches no object.
    """
    if mode not in TARGET_CHOICES:
        raise ValueError(f"target must be one of {TARGET_CHOICES}, got {mode!r}")
    if mode == "random":
        return int(np.random.default_rng(seed + 9_000_011).integers(env.n_objects))
    if mode == "planner":
        choice = planner_choice(env.render_cameras()["head_bgr"], info["objects"])
        if choice is not None:
            return choice
    return int(env.scene.target)
