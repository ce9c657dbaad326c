"""``GraspEnv``: the simulated grasping task behind the controller's observation/action contract."""
from __future__ import annotations

from typing import Optional

from sim import render as _render  # noqa: F401  (sets MUJOCO_GL before mujoco is imported)

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium import spaces  # noqa: E402

from inference_utils.robot_spec import normalize_arm, unnormalize_arm  # noqa: E402
from sim.config import SimConfig, SimConfigError, check_split  # noqa: E402
from sim.mjcf import build_mjcf  # noqa: E402
from sim.render import CameraRig  # noqa: E402
from sim.robot_model import (ARM_JOINTS, HAND_JOINTS, HOME_ARM_Q, HOME_HAND, hand_to_rad,  # noqa: E402
                             rad_to_hand)
from sim.scene import SceneSpec, sample_scene  # noqa: E402

SETTLE_STEPS = 150


class GraspEnv:
    """Gymnasium-style environment: an arm + dexterous hand grasping a target in clutter.

    ``reset(seed, split)`` samples a scene deterministically and returns ``(obs, info)``;
    ``step(action13)`` applies joint targets (7 normalised arm joints + 6 hand values, the layout
    of ``right_state``) for one control period, interpolating them at the physics rate.

    Observations: ``right_cam_img`` uint8 (H, W, 3) BGR wrist image, ``rgbm`` uint8 (H, W, 4) head
    image BGR + target mask (255 on the target), ``right_state`` float32 (13,).
    ``success`` means the target rose at least ``lift_height_m`` and stayed there ``hold_s``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = (config or SimConfig()).validate()
        h, w = self.config.image_height, self.config.image_width
        low = np.concatenate([-np.ones(7), np.zeros(6)]).astype(np.float32)
        self.action_space = spaces.Box(low=low, high=np.ones(13, np.float32), dtype=np.float32)
        self.observation_space = spaces.Dict({
            "right_cam_img": spaces.Box(0, 255, (h, w, 3), np.uint8),
            "rgbm": spaces.Box(0, 255, (h, w, 4), np.uint8),
            "right_state": spaces.Box(low=low, high=np.ones(13, np.float32), dtype=np.float32),
        })
        self.model: mujoco.MjModel | None = None
        self.data: mujoco.MjData | None = None
        self.cams: CameraRig | None = None
        self.scene: SceneSpec | None = None
        self.target = 0
        self._ctrl_from = np.zeros(13)
        self._ctrl_to = np.zeros(13)
        self._interp_left = 0
        self._interp_total = 1

    # ------------------------------------------------------------------ lifecycle
    def reset(self, seed: int | None = None, split: str | None = None, options: dict | None = None):
        """Build a new scene from ``seed`` (default 0) and ``split`` (default ``config.split``)."""
        split = check_split(split if split is not None else self.config.split)
        seed = 0 if seed is None else seed
        self.scene = sample_scene(seed, split, self.config)
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(self.scene, self.config))
        self.data = mujoco.MjData(self.model)
        m = self.model
        jid = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n)  # noqa: E731
        self._arm_q = np.array([m.jnt_qposadr[jid(j)] for j in ARM_JOINTS])
        self._arm_v = np.array([m.jnt_dofadr[jid(j)] for j in ARM_JOINTS])
        self._hand_q = np.array([m.jnt_qposadr[jid(j)] for j in HAND_JOINTS])
        self._obj_body = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, o.name) for o in self.scene.objects]
        self._obj_qadr = np.array([m.jnt_qposadr[jid(f"{o.name}_free")] for o in self.scene.objects])
        self._palm_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "palm_bottom")
        self._grasp_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "grasp")
        self._cams_bound = False
        d = self.data
        d.qpos[self._arm_q] = HOME_ARM_Q
        hand_rad = hand_to_rad(HOME_HAND)
        d.qpos[self._hand_q] = hand_rad
        home = np.concatenate([HOME_ARM_Q, hand_rad])
        d.ctrl[:] = home
        self._ctrl_from[:] = home
        self._ctrl_to[:] = home
        self._interp_left = 0
        mujoco.mj_forward(m, d)
        for _ in range(SETTLE_STEPS):
            mujoco.mj_step(m, d)
        d.time = 0.0
        self._spawn_z = np.array([d.xpos[b][2] for b in self._obj_body])
        self.target = int(self.scene.target)
        self._steps = 0
        self._hold = 0.0
        self._success = False
        self._last_action = self.current_state()
        obs = self._observe()
        return obs, self._info()

    def close(self) -> None:
        """Release the renderer (safe to call repeatedly)."""
        if self.cams is not None:
            self.cams.close()
            self.cams = None
        self._cams_bound = False

    def __enter__(self) -> "GraspEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ control
    def _check_action(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (13,):
            raise SimConfigError(f"action must have shape (13,) (7 arm + 6 hand), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise SimConfigError(f"action contains NaN/inf: {a}")
        return a

    def _require_reset(self) -> None:
        if self.data is None:
            raise RuntimeError("GraspEnv: call reset() before stepping or rendering")

    def command(self, action13: np.ndarray) -> None:
        """Set new joint targets (13-D layout) without stepping; ``advance`` interpolates to them."""
        self._require_reset()
        a = self._check_action(action13)
        self._last_action = a.astype(np.float32)
        target = np.concatenate([unnormalize_arm(np.clip(a[:7], -1.0, 1.0)), hand_to_rad(a[7:])])
        self._ctrl_from = self.data.ctrl.copy()
        self._ctrl_to = target
        self._interp_total = self.config.substeps
        self._interp_left = self._interp_total

    def advance(self, n_physics_steps: int) -> None:
        """Run ``n_physics_steps`` physics steps, interpolating the last command linearly."""
        self._require_reset()
        m, d = self.model, self.data
        for _ in range(int(n_physics_steps)):
            if self._interp_left > 0:
                self._interp_left -= 1
                s = 1.0 - self._interp_left / self._interp_total
                d.ctrl[:] = self._ctrl_from + s * (self._ctrl_to - self._ctrl_from)
            mujoco.mj_step(m, d)

    def step(self, action13: np.ndarray):
        """Apply ``action13`` for one control period; returns ``(obs, reward, terminated, truncated, info)``."""
        self.command(action13)
        self.advance(self.config.substeps)
        self._steps += 1
        lifted = self.target_lift() >= self.config.lift_height_m
        self._hold = self._hold + 1.0 / self.config.control_hz if lifted else 0.0
        if self._hold + 1e-9 >= self.config.hold_s and lifted:
            self._success = True
        dropped = self.data.xpos[self._obj_body[self.target]][2] < -0.05
        terminated = (self._success and self.config.terminate_on_success) or dropped
        truncated = (not terminated) and self._steps >= self.config.max_steps
        obs = self._observe()
        return obs, float(self._success), bool(terminated), bool(truncated), self._info()

    # ------------------------------------------------------------------ state queries
    def arm_qpos(self) -> np.ndarray:
        """Arm joint angles (rad, (7,))."""
        self._require_reset()
        return self.data.qpos[self._arm_q].copy()

    def hand_state(self) -> np.ndarray:
        """Hand joint values normalised to [0, 1] (1 = open), (6,)."""
        self._require_reset()
        return rad_to_hand(self.data.qpos[self._hand_q])

    def current_state(self) -> np.ndarray:
        """The 13-D ``right_state`` (float32)."""
        return np.concatenate([normalize_arm(self.arm_qpos()), self.hand_state()]).astype(np.float32)

    def hand_height(self) -> float:
        """Height of the palm's underside above the world origin (table top at z=0), metres."""
        self._require_reset()
        return float(self.data.site_xpos[self._palm_site][2])

    def grasp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) and rotation (3, 3) of the hand's grasp point."""
        self._require_reset()
        return (self.data.site_xpos[self._grasp_site].copy(),
                self.data.site_xmat[self._grasp_site].reshape(3, 3).copy())

    def object_pose(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) and quaternion (w, x, y, z) of object ``i``."""
        self._check_index(i)
        a = self._obj_qadr[i]
        return self.data.qpos[a:a + 3].copy(), self.data.qpos[a + 3:a + 7].copy()

    def place_object(self, i: int, pos: np.ndarray, quat: Optional[np.ndarray] = None) -> None:
        """Move object ``i`` to world position ``pos`` (3,) at rest, with orientation ``quat``
        (w, x, y, z; default: kept) -- scripted scenes and tests (an object taken off the table,
        a cylinder knocked over)."""
        self._check_index(i)
        a = self._obj_qadr[i]
        self.data.qpos[a:a + 3] = np.asarray(pos, dtype=float)
        if quat is not None:
            self.data.qpos[a + 3:a + 7] = np.asarray(quat, dtype=float) / np.linalg.norm(quat)
        body = self._obj_body[i]
        dof = self.model.body_dofadr[body]
        self.data.qvel[dof:dof + 6] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def object_lift(self, i: int) -> float:
        """How far object ``i`` rose above its resting height (m)."""
        self._check_index(i)
        return float(self.data.xpos[self._obj_body[i]][2] - self._spawn_z[i])

    def object_lifted(self, i: int, height: float | None = None) -> bool:
        """Whether object ``i`` is at least ``height`` (default ``lift_height_m``) above its rest."""
        return self.object_lift(i) >= (self.config.lift_height_m if height is None else height)

    def target_lift(self) -> float:
        """Lift of the current target (m)."""
        return self.object_lift(self.target)

    def set_target(self, object_index: int) -> None:
        """Choose which object is the target (its mask goes into ``rgbm``; success refers to it)."""
        self._check_index(object_index)
        self.target = int(object_index)
        self._hold = 0.0
        self._success = False

    def _check_index(self, i: int) -> None:
        self._require_reset()
        if not 0 <= int(i) < len(self._obj_body):
            raise IndexError(f"object index {i} out of range (scene has {len(self._obj_body)} objects)")

    @property
    def n_objects(self) -> int:
        """Number of objects in the current scene."""
        return 0 if self.scene is None else len(self.scene.objects)

    @property
    def steps(self) -> int:
        """Control steps taken since ``reset``."""
        return self._steps

    @property
    def success(self) -> bool:
        """Whether the current target has been lifted and held."""
        return self._success

    # ------------------------------------------------------------------ rendering
    def render_cameras(self) -> dict:
        """Render both cameras: ``head_bgr``, ``wrist_bgr``, ``head_seg`` (object index, -1 elsewhere).

        With ``config.render_wrist_seg`` also ``wrist_seg``.
        """
        self._require_reset()
        if self.cams is None:  # created lazily: physics-only runs never start a GL context
            self.cams = CameraRig(self.config.image_height, self.config.image_width, self.config.shadows)
        if not self._cams_bound:  # one GL context for the env's lifetime, re-bound per scene
            self.cams.bind(self.model, self._obj_body)
            self._cams_bound = True
        head, seg = self.cams.rgb_and_seg(self.data, "head_cam")
        out = {"head_bgr": head, "head_seg": seg}
        if self.config.render_wrist_seg:
            out["wrist_bgr"], out["wrist_seg"] = self.cams.rgb_and_seg(self.data, "wrist_cam")
        else:
            out["wrist_bgr"] = self.cams.rgb(self.data, "wrist_cam")
        self._last_seg = seg
        return out

    def render(self) -> np.ndarray:
        """RGB head image (gymnasium ``rgb_array`` convention)."""
        return self.render_cameras()["head_bgr"][:, :, ::-1].copy()

    def observe(self) -> dict:
        """The current observation (same keys as ``step``), re-rendered without stepping, e.g.
        after :meth:`set_target` changed which object's mask goes into ``rgbm``."""
        self._require_reset()
        return self._observe()

    def _observe(self) -> dict:
        if not self.config.render_observations:
            h, w = self.config.image_height, self.config.image_width
            self._last_seg = np.full((h, w), -1, dtype=np.int16)
            return {"right_cam_img": np.zeros((h, w, 3), np.uint8), "rgbm": np.zeros((h, w, 4), np.uint8),
                    "right_state": self.current_state()}
        cams = self.render_cameras()
        mask = np.where(cams["head_seg"] == self.target, 255, 0).astype(np.uint8)
        rgbm = np.concatenate([cams["head_bgr"], mask[:, :, None]], axis=2)
        return {"right_cam_img": cams["wrist_bgr"], "rgbm": rgbm, "right_state": self.current_state()}

    def _info(self) -> dict:
        seg = self._last_seg
        objects = []
        rendered = self.config.render_observations
        for i, o in enumerate(self.scene.objects):
            bbox, npix = None, 0
            if rendered:
                m = seg == i
                rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
                npix = int(np.count_nonzero(m))
                if rows.size:
                    bbox = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
            lift = self.object_lift(i)
            objects.append({"name": o.name, "shape": o.shape, "colour": o.colour_name,
                            "rgb": list(o.rgb), "label": o.describe(), "bbox_head": bbox,
                            "on_table": bool(lift < 0.02 and self.data.xpos[self._obj_body[i]][2] > -0.01),
                            "pixels": npix})
        return {"success": self._success, "target_id": self.target, "objects": objects,
                "target_lift_m": self.target_lift(), "step": self._steps,
                "time_s": self._steps / self.config.control_hz, "seed": self.scene.seed,
                "split": self.scene.split, "hold_s": self._hold}
