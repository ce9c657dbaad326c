"""Numerical inverse kinematics of the arm (damped least squares with a posture null-space term)."""
from __future__ import annotations

import math

import mujoco
import numpy as np

from inference_utils.robot_spec import ARM_LOWER, ARM_UPPER
from sim.robot_model import ARM_JOINTS


def topdown_rotation(yaw: float) -> np.ndarray:
    """Hand orientation pointing straight down, closing axis (hand x) along world ``yaw``."""
    c, s = math.cos(yaw), math.sin(yaw)
    x = np.array([c, s, 0.0])
    z = np.array([0.0, 0.0, -1.0])
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


class ArmIK:
    """IK for the ``grasp`` site on a private copy of the model's kinematic state.

    Args:
        model: the compiled scene model (the arm's joints must be named as in ``robot_model``).
        site: site whose pose is controlled.
    """

    def __init__(self, model: mujoco.MjModel, site: str = "grasp") -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.site_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, site)
        if self.site_id < 0:
            raise ValueError(f"site={site!r} not found in the model")
        jids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, j) for j in ARM_JOINTS]
        self.qadr = np.array([model.jnt_qposadr[j] for j in jids])
        self.dadr = np.array([model.jnt_dofadr[j] for j in jids])
        self._jp = np.zeros((3, model.nv))
        self._jr = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Site position (3,) and rotation matrix (3, 3) for arm joints ``q``."""
        self.data.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        return self.data.site_xpos[self.site_id].copy(), self.data.site_xmat[self.site_id].reshape(3, 3).copy()

    def solve(self, q_init: np.ndarray, pos: np.ndarray, rot: np.ndarray, q_posture: np.ndarray | None = None,
              iters: int = 30, tol: float = 3e-4, damping: float = 1e-3, posture_gain: float = 0.05,
              max_step: float = 0.25) -> tuple[np.ndarray, float]:
        """Joint angles reaching ``pos``/``rot`` starting from ``q_init``; returns (q, position error)."""
        q = np.array(q_init, dtype=np.float64)
        post = q if q_posture is None else np.asarray(q_posture, dtype=np.float64)
        err = np.inf
        for it in range(iters):
            p, r = self.forward(q)
            e_pos = pos - p
            mm = rot @ r.T  # ~ I + [w]x for a small rotation error w
            e_rot = 0.5 * np.array([mm[2, 1] - mm[1, 2], mm[0, 2] - mm[2, 0], mm[1, 0] - mm[0, 1]])
            err = float(np.linalg.norm(e_pos))
            self.last_iters = it
            if err < tol and np.linalg.norm(e_rot) < 10 * tol:
                break
            mujoco.mj_jacSite(self.model, self.data, self._jp, self._jr, self.site_id)
            jac = np.vstack([self._jp[:, self.dadr], self._jr[:, self.dadr]])
            e = np.concatenate([e_pos, e_rot])
            jjt = jac @ jac.T + damping * np.eye(6)
            dq = jac.T @ np.linalg.solve(jjt, e)
            null = np.eye(7) - jac.T @ np.linalg.solve(jjt, jac)
            dq += null @ (posture_gain * (post - q))
            n = np.linalg.norm(dq)
            if n > max_step:
                dq *= max_step / n
            q = np.clip(q + dq, ARM_LOWER + 1e-3, ARM_UPPER - 1e-3)
        p, _ = self.forward(q)
        return q, float(np.linalg.norm(pos - p))
