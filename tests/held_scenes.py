"""Real simulator grasps for the verifier's tests: the scripted expert lifts a scene's target,
then the object is put down on a free spot 15 cm from where it lay, with the hand unmoved."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")


@dataclass
class HeldScene:
    """The two moments of one grasp: camera views while held and after putting the object down."""

    colour: str
    shape: str
    box: list[int]              # the target's head-camera box before the grasp (x1, y1, x2, y2)
    held: dict[str, Any]        # GraspEnv.render_cameras() while the expert holds it up
    down: dict[str, Any]        # ... after it is put down (same hand pose)
    held_lift: float            # metres above its rest, simulator truth
    down_lift: float


def held_then_put_down(env, split: str, seed: int) -> Optional[HeldScene]:
    """One grasp of ``env``'s target in scene (split, seed); None when the expert did not lift it."""
    from sim.expert import run_expert_episode  # noqa: PLC0415

    env.reset(seed=seed, split=split)
    ys, xs = np.nonzero(env.render_cameras()["head_seg"] == env.target)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    _, rest_quat = env.object_pose(env.target)
    if not run_expert_episode(env, seed, split, target="scene")["success"]:
        return None
    spec = env.scene.objects[env.target]
    held, held_lift = env.render_cameras(), env.object_lift(env.target)
    others = [env.object_pose(j)[0][:2] for j in range(env.n_objects) if j != env.target]
    spots = [np.array(spec.pos[:2]) + d for d in ([0.15, 0], [-0.15, 0], [0, 0.15], [0, -0.15])]
    free = max(spots, key=lambda p: min((np.linalg.norm(p - o) for o in others), default=1.0))
    env.place_object(env.target, np.array([free[0], free[1], spec.pos[2] + 0.005]), rest_quat)
    env.advance(200)                                       # let it settle on the table
    down_lift = env.object_lift(env.target)
    assert down_lift < 0.02, "the object should lie on the table again"
    return HeldScene(spec.colour_name, spec.shape, box, held, env.render_cameras(), held_lift, down_lift)
