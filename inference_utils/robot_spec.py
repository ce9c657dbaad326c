"""Robot constants shared by the simulator, drivers and runtime (DESIGN.md sections 1 and 4).

The 13-D state/action vector is ``[7 arm joints normalised to [-1, 1], 6 hand values in [0, 1]]``.
Arm joints are normalised against the RealMan RM75 joint limits: ``2 (q - lo) / (hi - lo) - 1``.
Hand values: 1 = open, 0 = closed, in the DOF order little, ring, middle, index, thumb-bend,
thumb-rotate (the Inspire RH56 register order).
"""
from __future__ import annotations

import numpy as np

ARM_DOF = 7
HAND_DOF = 6
STATE_DIM = ARM_DOF + HAND_DOF

#: RealMan RM75 joint limits in radians.
ARM_LOWER = np.array([-3.1, -2.268, -3.1, -2.355, -3.1, -2.233, -6.28], dtype=np.float64)
ARM_UPPER = -ARM_LOWER
#: Largest arm joint change a single command may ask for (10 degrees per frame).
ARM_MAX_STEP_RAD = np.deg2rad(10.0)

HAND_DOF_NAMES = ("little", "ring", "middle", "index", "thumb_bend", "thumb_rotate")
HAND_OPEN = np.ones(HAND_DOF, dtype=np.float64)


def normalize_arm(q: np.ndarray) -> np.ndarray:
    """Joint angles (rad, (..., 7)) -> [-1, 1]."""
    q = np.asarray(q, dtype=np.float64)
    return 2.0 * (q - ARM_LOWER) / (ARM_UPPER - ARM_LOWER) - 1.0


def unnormalize_arm(x: np.ndarray) -> np.ndarray:
    """[-1, 1] ((..., 7)) -> joint angles in rad."""
    x = np.asarray(x, dtype=np.float64)
    return (x + 1.0) * 0.5 * (ARM_UPPER - ARM_LOWER) + ARM_LOWER
