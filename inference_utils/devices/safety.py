"""Command safety checks shared by every arm and hand implementation (real and simulated).

Arm motion is limited by :class:`JointVelocityGuard`: a joint target is clamped to the joint
limits and then moved at most ``max_vel * dt`` per joint away from a *reference* position, where
``dt`` is the time elapsed since the previous accepted command, capped at ``max_dt``. Every arm
applies it in :meth:`~inference_utils.devices.base.Arm.send_joints` against the joints measured
at that moment; the RealMan driver applies the same rule again to every streamed frame against the
last frame sent (see :mod:`inference_utils.devices.realman_arm`).

Defaults (configurable per arm as ``max_joint_vel_rad_s`` -- one value or 7 -- and
``max_dt_s``, e.g. in ``inference_utils/config/robot/real.yaml``):

* :data:`ARM_MAX_JOINT_VEL_RAD_S` -- pi rad/s (180 deg/s) on every joint: the rated speed of the
  slowest RealMan RM75 joints (J1, J2), and the same order as the former 10 degrees per 20 Hz
  command (200 deg/s). Configured values may only be lower than :data:`ARM_RATED_JOINT_VEL_RAD_S`.
* :data:`ARM_MAX_COMMAND_DT_S` -- 0.05 s, one 20 Hz control period: after any pause, one
  command moves a joint at most 9 degrees from where it is measured.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable

import numpy as np

from inference_utils.devices.base import DeviceConfigError, DeviceSafetyError
from inference_utils.robot_spec import ARM_DOF, ARM_LOWER, ARM_MAX_STEP_RAD, ARM_UPPER, HAND_DOF

log = logging.getLogger(__name__)

#: Rated maximum joint speeds of the RealMan RM75 (J1-J2 180 deg/s, J3-J7 225 deg/s), rad/s.
ARM_RATED_JOINT_VEL_RAD_S = np.deg2rad([180.0, 180.0, 225.0, 225.0, 225.0, 225.0, 225.0])
#: Default joint velocity limit of arm commands, rad/s per joint (180 deg/s).
ARM_MAX_JOINT_VEL_RAD_S = np.full(ARM_DOF, np.pi)
#: Default cap (s) on the elapsed time credited to one command (one 20 Hz control period).
ARM_MAX_COMMAND_DT_S = 0.05
#: Largest accepted ``max_dt_s`` setting (s).
ARM_MAX_COMMAND_DT_LIMIT_S = 0.2


def as_finite_vector(values: object, size: int, what: str) -> np.ndarray:
    """Convert ``values`` to a finite ``float64 (size,)`` vector or raise DeviceSafetyError."""
    try:
        vec = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DeviceSafetyError(f"{what}: cannot convert {values!r} to numbers ({exc})") from exc
    if vec.shape != (size,):
        raise DeviceSafetyError(f"{what}: expected {size} values, got shape {np.shape(values)}")
    if not np.all(np.isfinite(vec)):
        raise DeviceSafetyError(f"{what}: non-finite value in {vec.tolist()}")
    return vec


def clamp_arm_target(
    q_target: object,
    q_reference: np.ndarray | None,
    lower: np.ndarray = ARM_LOWER,
    upper: np.ndarray = ARM_UPPER,
    max_step: float = ARM_MAX_STEP_RAD,
) -> np.ndarray:
    """Clamp an arm joint target (rad) to ``[lower, upper]`` and to ``max_step`` per joint.

    Stateless building block (no notion of time): ``q_reference`` is the position the step is
    measured from; ``None`` skips the step clamp. Returns a new ``float64 (7,)`` array. Devices
    use :class:`JointVelocityGuard`, which bounds the step by the elapsed time.
    """
    q = as_finite_vector(q_target, ARM_DOF, "arm target")
    q = np.clip(q, lower, upper)
    if q_reference is not None:
        ref = as_finite_vector(q_reference, ARM_DOF, "arm reference")
        q = ref + np.clip(q - ref, -max_step, max_step)
        q = np.clip(q, lower, upper)
    return q


def check_arm_within_limits(
    q: object, lower: np.ndarray = ARM_LOWER, upper: np.ndarray = ARM_UPPER, what: str = "arm pose"
) -> np.ndarray:
    """Return ``q`` as a vector, raising DeviceSafetyError if any joint is outside the limits."""
    vec = as_finite_vector(q, ARM_DOF, what)
    bad = np.flatnonzero((vec < lower - 1e-9) | (vec > upper + 1e-9))
    if bad.size:
        details = ", ".join(
            f"joint {i + 1}={vec[i]:.4f} rad not in [{lower[i]:.4f}, {upper[i]:.4f}]" for i in bad
        )
        raise DeviceSafetyError(f"{what} outside joint limits: {details}")
    return vec


def clamp_hand(values: object) -> np.ndarray:
    """Clamp 6 normalised hand values to ``[0, 1]`` (NaN/inf or wrong shape -> DeviceSafetyError)."""
    return np.clip(as_finite_vector(values, HAND_DOF, "hand command"), 0.0, 1.0)


# -- velocity limit over time ---------------------------------------------------------------------
def check_joint_velocity_limit(
    value: Any, field: str = "max_joint_vel_rad_s", rated: np.ndarray = ARM_RATED_JOINT_VEL_RAD_S
) -> np.ndarray:
    """A joint velocity limit in rad/s -- one number or 7 -- as ``float64 (7,)``.

    Every value must lie in ``(0, rated[i]]``: a configuration may only narrow the rated speeds.
    Raises :class:`DeviceConfigError` naming ``field``.
    """
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DeviceConfigError(f"{field}: expected a number or {ARM_DOF} numbers in rad/s, got {value!r}") from None
    if isinstance(value, bool) or arr.size == 0 or arr.dtype == np.bool_:
        raise DeviceConfigError(f"{field}: expected a number or {ARM_DOF} numbers in rad/s, got {value!r}")
    if arr.size == 1:
        arr = np.full(ARM_DOF, float(arr[0]))
    if arr.shape != (ARM_DOF,):
        raise DeviceConfigError(f"{field}: expected 1 or {ARM_DOF} values, got {arr.size}")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0.0) | (arr > rated + 1e-9))
    if bad.size:
        i = int(bad[0])
        raise DeviceConfigError(
            f"{field}: joint {i + 1} limit {arr[i]!r} rad/s is out of range (0, {rated[i]:.4f}] "
            "(the rated speed; limits may only be lowered)"
        )
    return arr


def check_command_dt(value: Any, field: str = "max_dt_s") -> float:
    """The cap on the elapsed time credited to one command, in ``(0, 0.2]`` s."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise DeviceConfigError(f"{field}: expected a number of seconds, got {value!r}")
    if not 0.0 < float(value) <= ARM_MAX_COMMAND_DT_LIMIT_S:
        raise DeviceConfigError(f"{field}: {value} s is out of range (0, {ARM_MAX_COMMAND_DT_LIMIT_S}]")
    return float(value)


@dataclasses.dataclass(frozen=True)
class GuardRecord:
    """What :meth:`JointVelocityGuard.limit` did with one command (all angles in rad)."""

    time: float                     #: clock reading of the command (s)
    dt: float                       #: elapsed time credited to it, already capped (s)
    reference: np.ndarray           #: position the step was measured from, (7,)
    requested: np.ndarray           #: target as asked, (7,)
    result: np.ndarray              #: target after the limits and the velocity clamp, (7,)
    limit_clamped: np.ndarray       #: bool (7,): joint changed by the joint limits
    velocity_clamped: np.ndarray    #: bool (7,): joint changed by the velocity limit

    @property
    def clamped(self) -> bool:
        """True if any joint of the command was changed."""
        return bool(np.any(self.limit_clamped) or np.any(self.velocity_clamped))


class _RateLimitedLog:
    """Logs at most one message per ``interval_s`` and reports how many were suppressed."""

    def __init__(self, logger: logging.Logger, level: int, interval_s: float):
        self.logger, self.level, self.interval_s = logger, level, float(interval_s)
        self._last: float | None = None
        self._suppressed = 0

    def __call__(self, make_message: Callable[[], str]) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval_s:
            self._suppressed += 1
            return
        suffix = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        self._last, self._suppressed = now, 0
        self.logger.log(self.level, "%s%s", make_message(), suffix)


class JointVelocityGuard:
    """Joint limits plus a joint velocity limit over real elapsed time, against a reference.

    ``limit(target, reference)`` clamps ``target`` to ``[lower, upper]`` and then to within
    ``max_vel * dt`` of ``reference`` per joint, where ``dt`` is the time since the previous
    accepted command (``limit`` call) capped at ``max_dt``; the first command after construction
    or :meth:`reset` is credited ``max_dt``. ``max_step`` (optional) is an extra absolute bound
    per command. A clock that goes backwards credits ``dt = 0``.

    The result never leaves the joint limits, and never moves a joint more than the allowed step
    from ``reference`` -- except when ``reference`` itself lies outside the limits, where the
    limits win. Commands that had to be changed are counted (:attr:`clamped_count`) and logged
    at most once per ``log_interval_s``. Thread-safe.
    """

    def __init__(
        self,
        max_vel_rad_s: Any = ARM_MAX_JOINT_VEL_RAD_S,
        max_dt_s: float = ARM_MAX_COMMAND_DT_S,
        lower: np.ndarray = ARM_LOWER,
        upper: np.ndarray = ARM_UPPER,
        *,
        max_step_rad: float | None = None,
        name: str = "arm command",
        clock: Callable[[], float] = time.monotonic,
        log_interval_s: float = 1.0,
        log_level: int = logging.WARNING,
    ):
        self.max_vel = check_joint_velocity_limit(max_vel_rad_s, rated=np.full(ARM_DOF, np.inf))
        if isinstance(max_dt_s, bool) or not isinstance(max_dt_s, (int, float)) or not 0 < max_dt_s < np.inf:
            raise DeviceConfigError(f"max_dt_s: expected a positive number of seconds, got {max_dt_s!r}")
        self.max_dt = float(max_dt_s)
        self.lower = np.asarray(lower, dtype=np.float64).reshape(ARM_DOF).copy()
        self.upper = np.asarray(upper, dtype=np.float64).reshape(ARM_DOF).copy()
        if np.any(self.lower >= self.upper):
            raise DeviceConfigError("lower/upper: every lower joint limit must be below the upper one")
        self.max_step = None if max_step_rad is None else float(max_step_rad)
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._last_time: float | None = None
        self._last: GuardRecord | None = None
        self._log = _RateLimitedLog(log, log_level, log_interval_s)
        self.commands = 0
        self.clamped_count = 0
        self.limit_clamped_count = 0
        self.velocity_clamped_count = 0

    @property
    def max_command_step(self) -> np.ndarray:
        """Largest move per joint one command may make from its reference (rad, (7,))."""
        step = self.max_vel * self.max_dt
        return step if self.max_step is None else np.minimum(step, self.max_step)

    @property
    def last(self) -> GuardRecord | None:
        """Record of the last accepted command (``None`` before the first one)."""
        with self._lock:
            return self._last

    def reset(self) -> None:
        """Forget the previous command time: the next command is credited ``max_dt``."""
        with self._lock:
            self._last_time = None

    def validate(self, target: Any) -> np.ndarray:
        """``target`` as a finite ``float64 (7,)`` vector, or DeviceSafetyError (no state change)."""
        return as_finite_vector(target, ARM_DOF, f"{self.name} target")

    def limit(self, target: Any, reference: Any, now: float | None = None) -> np.ndarray:
        """Clamp ``target`` (rad) to the limits and to ``max_vel * dt`` of ``reference``.

        ``now`` is the command time on the guard's clock (``None``: read the clock). Returns a new
        ``float64 (7,)`` array; non-finite values or a wrong shape raise DeviceSafetyError and do
        not count as a command.
        """
        q = self.validate(target)
        ref = as_finite_vector(reference, ARM_DOF, f"{self.name} reference")
        with self._lock:
            t = self._clock() if now is None else float(now)
            if self._last_time is None:
                dt = self.max_dt
            else:
                dt = min(max(t - self._last_time, 0.0), self.max_dt)
            step = self.max_vel * dt
            if self.max_step is not None:
                step = np.minimum(step, self.max_step)
            q_lim = np.clip(q, self.lower, self.upper)
            delta = q_lim - ref
            velocity_hit = np.abs(delta) > step
            result = np.where(velocity_hit, ref + np.clip(delta, -step, step), q_lim)
            result = np.clip(result, self.lower, self.upper)
            limit_hit = q_lim != q
            record = GuardRecord(t, dt, ref.copy(), q.copy(), result.copy(), limit_hit, velocity_hit)
            self._last_time = t
            self._last = record
            self.commands += 1
            if record.clamped:
                self.clamped_count += 1
                self.limit_clamped_count += int(np.any(limit_hit))
                self.velocity_clamped_count += int(np.any(velocity_hit))
                count = self.clamped_count
        if record.clamped:
            self._log(lambda: self._describe(record, count))
        return result

    def _describe(self, record: GuardRecord, count: int) -> str:
        parts = []
        for i in np.flatnonzero(record.limit_clamped | record.velocity_clamped):
            why = "limit" if record.limit_clamped[i] and not record.velocity_clamped[i] else "velocity"
            parts.append(f"joint {i + 1} {record.requested[i]:+.4f} -> {record.result[i]:+.4f} rad ({why})")
        return (f"{self.name} clamped (#{count}, dt={record.dt * 1000:.1f} ms, "
                f"max {np.rad2deg(self.max_vel.min()):.0f} deg/s): " + "; ".join(parts))

    def stats(self) -> dict[str, int]:
        """Counters: ``commands``, ``clamped``, ``limit_clamped``, ``velocity_clamped``."""
        with self._lock:
            return {"commands": self.commands, "clamped": self.clamped_count,
                    "limit_clamped": self.limit_clamped_count, "velocity_clamped": self.velocity_clamped_count}
