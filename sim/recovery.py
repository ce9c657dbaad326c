"""Recovery demonstrations: the scripted expert first misses the target on purpose (not recorded),
then re-plans from where the miss left the hand and grasps; only the recovery is recorded.

Why: expert demonstrations never contain a failed grasp, so a learned controller that closes its
hand beside the object and lifts it empty has never seen what to do next. In the simulator it then
hovers above the table until the time limit (most closed-loop failures of the shipped controller
on the planner's unseen objects were such timeouts). A recovery demonstration starts in exactly
that state -- hand raised and closed, the target still on the table, perhaps pushed or tipped by
the miss -- and shows the hand opening, returning to the object and grasping it.

The miss is staged with the expert's own plan, shifted (:class:`MissSpec`): sideways, so the
fingers close beside the object, or upwards, so they close above it. The hand then rises part of
the planned lift, may wait a few steps, and holds still until the target has stopped moving. The miss runs through ``env.command``/``env.advance``
(physics only: no rendering, the episode's step count and success clock stay at zero), so the
recorded episode starts at step 0 in the post-miss state and has the full time limit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Lift of the target (m above its spawn height) above which the staged miss counts as a grasp.
GRASPED_LIFT_M = 0.02
#: After the miss the hand holds still until the target moves less than this per control step
#: (a pushed ball or lying cylinder may still be rolling), for at most ``SETTLE_MAX_STEPS``.
SETTLE_TOL_M = 0.0005
SETTLE_MAX_STEPS = 60


@dataclass(frozen=True)
class MissSpec:
    """A staged missed grasp.

    Attributes:
        offset: (3,) metres added to the expert's pre-grasp / grasp / lift points.
        lift_fraction: share of the planned lift executed before the recovery starts (0..1).
        hold_steps: control steps the raised, closed hand waits before the recovery starts.
    """

    offset: tuple[float, float, float]
    lift_fraction: float
    hold_steps: int

    def __post_init__(self) -> None:
        if len(self.offset) != 3 or not all(math.isfinite(v) for v in self.offset):
            raise ValueError(f"MissSpec.offset must be 3 finite numbers, got {self.offset}")
        if not 0.0 <= self.lift_fraction <= 1.0:
            raise ValueError(f"MissSpec.lift_fraction must be in [0, 1], got {self.lift_fraction}")
        if self.hold_steps < 0:
            raise ValueError(f"MissSpec.hold_steps must be >= 0, got {self.hold_steps}")


def sample_miss(rng: np.random.Generator) -> MissSpec:
    """A random miss: 60 % sideways (3-6 cm in any horizontal direction), 40 % high (the hand
    closes 3-6 cm above the grasp point, up to 1.5 cm off sideways); then 40-100 % of the lift
    and 0-10 waiting steps."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    if rng.uniform() < 0.6:
        r, dz = rng.uniform(0.03, 0.06), 0.0
    else:
        r, dz = rng.uniform(0.0, 0.015), rng.uniform(0.03, 0.06)
    offset = (float(r * math.cos(angle)), float(r * math.sin(angle)), float(dz))
    return MissSpec(offset, float(rng.uniform(0.4, 1.0)), int(rng.integers(0, 11)))


def stage_miss(env, expert, miss: MissSpec) -> tuple[bool, str]:
    """Run ``miss`` with ``expert`` in ``env`` (physics only). Returns ``(usable, reason)``: not
    usable when the shifted grasp caught the target anyway or knocked it off the table."""
    expert.plan(env, grasp_offset=miss.offset)
    lift = expert.timing.lift
    n = expert.total_steps - lift + int(round(miss.lift_fraction * lift)) + miss.hold_steps
    for _ in range(n):
        env.command(expert.next_action())
        env.advance(env.config.substeps)
    before = env.object_pose(env.target)[0]
    for _ in range(SETTLE_MAX_STEPS):  # the last command stays: the hand holds its pose
        env.advance(env.config.substeps)
        now = env.object_pose(env.target)[0]
        if np.linalg.norm(now - before) < SETTLE_TOL_M:
            break
        before = now
    else:
        return False, f"the target was still moving {SETTLE_MAX_STEPS} steps after the staged miss"
    if env.target_lift() >= GRASPED_LIFT_M:
        return False, f"the staged miss lifted the target by {env.target_lift():.3f} m"
    if env.object_pose(env.target)[0][2] < -0.01:
        return False, "the staged miss knocked the target off the table"
    return True, ""
