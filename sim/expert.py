"""Scripted grasping expert: IK to a pre-grasp above the target, align with its narrow side,
descend, close the hand and lift.

The expert plans from the ground-truth scene when the episode starts (or the target changes) and
then emits one 13-D joint target per control step (``act(env)``), so collection, the success
benchmark and tests share it. Its action sequence is a deterministic function of the scene.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from inference_utils.robot_spec import normalize_arm
from sim.kinematics import ArmIK, topdown_rotation
from sim.robot_model import HOME_ARM_Q
from sim.targets import TARGET_CHOICES, pick_target  # TARGET_CHOICES re-exported for sim.collect


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _min_jerk(s: float) -> float:
    s = min(max(s, 0.0), 1.0)
    return s * s * s * (10 - 15 * s + 6 * s * s)


def _quat_yaw(q: np.ndarray) -> float:
    w, x, y, z = q
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


@dataclass
class ExpertTiming:
    """Phase lengths in control steps (20 Hz) and heights in metres."""

    approach: int = 24  # nominal; the actual count scales with the distance to the pre-grasp
    approach_speed: float = 0.012  # metres per step used to size the approach
    descend: int = 14
    close: int = 8
    settle: int = 4
    lift: int = 20
    pre_height: float = 0.10
    lift_height: float = 0.17
    min_grasp_z: float = 0.042


class ScriptedExpert:
    """Step-by-step scripted grasp policy for :class:`sim.GraspEnv`.

    Usage::

        expert = ScriptedExpert()
        obs, info = env.reset(seed=3)
        while True:
            obs, r, term, trunc, info = env.step(expert.act(env))
            if term or trunc: break
    """

    def __init__(self, timing: ExpertTiming | None = None) -> None:
        self.timing = timing or ExpertTiming()
        self._key = None
        self._ik: ArmIK | None = None
        self._ik_model = None
        self._t = 0

    # ------------------------------------------------------------------ planning
    def plan(self, env, grasp_offset=None, keep_thumb: bool = False) -> None:
        """(Re)plan for the env's current scene and target from the current hand pose.

        ``grasp_offset`` (3,) metres shifts the pre-grasp, grasp and lift points (used to stage a
        missed grasp, :mod:`sim.recovery`). ``keep_thumb`` starts the thumb rotation from its
        measured value instead of the home pose's (re-planning mid-episode, e.g. after a miss)."""
        if self._ik_model is not env.model:
            self._ik = ArmIK(env.model)
            self._ik_model = env.model
        tm = self.timing
        spec = env.scene.objects[env.target]
        pos, quat = env.object_pose(env.target)
        g = spec.grasp_yaw - spec.yaw + _quat_yaw(quat)
        p0, r0 = env.grasp_pose()
        yaw0 = math.atan2(r0[1, 0], r0[0, 0])
        cands = [g, g + math.pi]
        psi = min(cands, key=lambda c: abs(_wrap(c - yaw0)))
        self._yaw0, self._dyaw = yaw0, _wrap(psi - yaw0)
        gz = max(float(pos[2]), tm.min_grasp_z)
        self._p0 = p0
        self._pre = np.array([pos[0], pos[1], gz + tm.pre_height])
        self._grasp = np.array([pos[0], pos[1], gz])
        if grasp_offset is not None:
            off = np.asarray(grasp_offset, dtype=np.float64).reshape(3)
            self._pre, self._grasp = self._pre + off, self._grasp + off
        self._lift = self._grasp + np.array([0.0, 0.0, tm.lift_height])
        dist = float(np.linalg.norm(self._pre - p0)) + 0.05 * abs(self._dyaw)
        self._n_approach = int(np.clip(round(dist / tm.approach_speed), tm.approach - 8, tm.approach + 10))
        self._q = env.arm_qpos()
        self._hand0 = env.hand_state()
        self._thumb0 = float(self._hand0[5]) if keep_thumb else 1.0
        self._t = 0
        self._key = (id(env.model), env.target)

    def _pose_at(self, t: int) -> tuple[np.ndarray, float, np.ndarray]:
        """Cartesian grasp-point target, yaw and hand command for step ``t`` of the plan."""
        tm = self.timing
        open_hand = np.ones(6)
        t1 = self._n_approach
        t2 = t1 + tm.descend
        t3 = t2 + tm.close
        t4 = t3 + tm.settle
        t5 = t4 + tm.lift
        yaw_end = self._yaw0 + self._dyaw
        if t < t1:
            s = _min_jerk((t + 1) / t1)
            hand = open_hand.copy()
            hand[5] = self._thumb0 * (1.0 - s)
            hand[:5] = self._hand0[:5] + (1.0 - self._hand0[:5]) * s
            return self._p0 + s * (self._pre - self._p0), self._yaw0 + s * self._dyaw, hand
        hand = open_hand.copy()
        hand[5] = 0.0
        if t < t2:
            s = _min_jerk((t - t1 + 1) / tm.descend)
            return self._pre + s * (self._grasp - self._pre), yaw_end, hand
        if t < t4:
            s = min(1.0, (t - t2 + 1) / tm.close)
            hand[:5] = 1.0 - s
            return self._grasp, yaw_end, hand
        hand[:5] = 0.0
        s = _min_jerk((t - t4 + 1) / tm.lift) if t < t5 else 1.0
        return self._grasp + s * (self._lift - self._grasp), yaw_end, hand

    #: Phases of a plan, in order (:meth:`phase_at`); ``hold`` follows the completed lift.
    PHASES = ("approach", "descend", "close", "lift", "hold")

    def phase_at(self, t: int) -> str:
        """The phase of plan step ``t``: ``approach`` (to the pre-grasp above the target),
        ``descend``, ``close`` (closing the hand and letting it settle), ``lift``, then ``hold``."""
        tm = self.timing
        t1 = getattr(self, "_n_approach", tm.approach)
        bounds = (t1, t1 + tm.descend, t1 + tm.descend + tm.close + tm.settle, self.total_steps)
        for name, end in zip(self.PHASES, bounds):
            if t < end:
                return name
        return "hold"

    @property
    def phase(self) -> str:
        """Phase of the target last returned by :meth:`act` (see :meth:`phase_at`)."""
        return self.phase_at(max(self.plan_step, 0))

    @property
    def plan_step(self) -> int:
        """Index in the plan of the target last returned by :meth:`act` (-1 before the first)."""
        return self._t - 1

    @property
    def descent_window(self) -> tuple[int, int]:
        """Plan steps (start, end) of the descent: approach before it, closing the hand after it."""
        t1 = getattr(self, "_n_approach", self.timing.approach)
        return t1, t1 + self.timing.descend

    @property
    def total_steps(self) -> int:
        """Steps until the lift is complete (the expert then holds)."""
        tm = self.timing
        n = getattr(self, "_n_approach", tm.approach)
        return n + tm.descend + tm.close + tm.settle + tm.lift

    # ------------------------------------------------------------------ acting
    def act(self, env) -> np.ndarray:
        """The next 13-D joint target (normalised arm + hand) for ``env``."""
        if self._key != (id(env.model), env.target) or env.steps == 0 and self._t > 0:
            self.plan(env)
        return self.next_action()

    def next_action(self) -> np.ndarray:
        """The next 13-D joint target of the current plan, without checking whether the env was
        reset or its target changed (:meth:`act` does; call :meth:`plan` first)."""
        pos, yaw, hand = self._pose_at(self._t)
        q, _ = self._ik.solve(self._q, pos, topdown_rotation(yaw), q_posture=HOME_ARM_Q, iters=40)
        self._q = q
        self._t += 1
        return np.concatenate([normalize_arm(q), hand]).astype(np.float32)


class ArmPerturbation:
    """Temporally correlated noise on the executed arm targets (DART-style data collection).

    The expert's labels are a function of the scene only (its IK warm-starts from its own previous
    solution, not from the measured arm), so executing ``label + noise`` while recording the clean
    label yields demonstrations of returning to the plan from perturbed states. The noise is an
    Ornstein-Uhlenbeck process in normalised joint units (stationary std ``sigma``), applied during
    the approach, faded out over the descent and off from the closing of the hand on.
    """

    def __init__(self, sigma: float, seed: int, theta: float = 0.15) -> None:
        self.sigma, self.theta = float(sigma), float(theta)
        self.rng = np.random.default_rng(seed)
        self.state = np.zeros(7)

    def __call__(self, expert: "ScriptedExpert") -> np.ndarray:
        """Perturbation (7,) for the expert's current step (call after ``expert.act``)."""
        step = math.sqrt(2 * self.theta - self.theta ** 2) * self.sigma
        self.state = (1 - self.theta) * self.state + step * self.rng.standard_normal(7)
        t = expert.plan_step
        t1, t2 = expert.descent_window
        scale = 1.0 if t < t1 else max(0.0, 1.0 - (t - t1 + 1) / max(t2 - t1 - 2, 1))
        return scale * self.state


#: A recovery episode stops this many control steps after the expert's plan ended without success.
RECOVERY_GIVE_UP_STEPS = 40


def run_expert_episode(env, seed: int, split: str = "train", expert: ScriptedExpert | None = None,
                       record: bool = False, action_noise: float = 0.0, target: str = "scene",
                       recovery: bool = False) -> dict:
    """Run one expert episode; returns success, steps and (if ``record``) the frames and actions,
    the expert's phase at each recorded step (``phases``) and the target's label (``target_label``,
    e.g. ``"red box"``).

    With ``action_noise > 0`` the arm executes the expert's target plus :class:`ArmPerturbation`
    noise (std in normalised joint units) while the recorded action stays the clean target.
    ``target``: ``"scene"`` grasps the scene's designated target (placed away from the rim with a
    free ring around it); ``"random"`` grasps an object drawn uniformly from the scene (seeded by
    ``seed``); ``"planner"`` the object the offline planner picks first (see :mod:`sim.targets`).
    With ``recovery`` the expert first misses the target on purpose (unrecorded, seeded by ``seed``;
    :mod:`sim.recovery`), then grasps it from there: the episode shows the recovery only. A miss
    that caught or dropped the target returns ``success=False`` with the reason in ``"skipped"``.
    """
    if target not in TARGET_CHOICES:
        raise ValueError(f"target must be one of {TARGET_CHOICES}, got {target!r}")
    expert = expert or ScriptedExpert()
    obs, info = env.reset(seed=seed, split=split)
    if target != "scene":
        chosen = pick_target(env, info, target, seed)
        if chosen != env.target:
            env.set_target(chosen)
            obs = env.observe()
    if recovery:
        from sim.recovery import sample_miss, stage_miss
        usable, why = stage_miss(env, expert, sample_miss(np.random.default_rng(seed + 5_000_011)))
        if not usable:
            return {"seed": seed, "split": split, "success": False, "steps": 0, "skipped": why,
                    "target_lift_m": env.target_lift(), "target_shape": env.scene.objects[env.target].shape,
                    "target": int(env.target), **({"frames": {}} if record else {})}
        expert.plan(env, keep_thumb=True)
        obs = env.observe()
    frames = {"right_cam_img": [], "rgbm": [], "right_state": [], "action": []}
    phases: list[str] = []  # the expert's phase at each recorded step (sub-step reasoning of the data)
    perturb = ArmPerturbation(action_noise, seed=seed + 7_000_003) if action_noise > 0 else None
    while True:
        action = expert.act(env)
        if record:
            for k in ("right_cam_img", "rgbm", "right_state"):
                frames[k].append(obs[k])
            frames["action"].append(action)
            phases.append(expert.phase)
        executed = action
        if perturb is not None:
            executed = action.copy()
            executed[:7] = np.clip(executed[:7] + perturb(expert), -1.0, 1.0)
        obs, _, terminated, truncated, info = env.step(executed)
        if terminated or truncated:
            break
        if recovery and expert.plan_step >= expert.total_steps + RECOVERY_GIVE_UP_STEPS:
            break  # the plan ended without a grasp: a failed recovery, not worth rendering to the limit
    out = {"seed": seed, "split": split, "success": bool(info["success"]), "steps": env.steps,
           "target_lift_m": info["target_lift_m"], "target_shape": env.scene.objects[env.target].shape,
           "target": int(env.target)}
    if record:
        out["frames"] = frames
        out["phases"] = phases
        out["target_label"] = env.scene.objects[env.target].describe()
    return out
