"""Command safety checks shared by every arm and hand implementation (real and simulated)."""
from __future__ import annotations

import numpy as np

from inference_utils.devices.base import DeviceSafetyError
from inference_utils.robot_spec import ARM_DOF, ARM_LOWER, ARM_MAX_STEP_RAD, ARM_UPPER, HAND_DOF


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

    ``q_reference`` is the position the step is measured from (last commanded or measured);
    ``None`` skips the step clamp. Returns a new ``float64 (7,)`` array.
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
