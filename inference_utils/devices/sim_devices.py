"""Simulated devices: camera, arm and hand backed by one shared :class:`sim.GraspEnv`.

The simulator only advances when it is stepped, so the devices never step it themselves
(except the blocking ``SimArm.move_to``): ``send_joints`` / ``send`` only update the pending
13-D joint target of the shared :class:`SimSession`, and the runtime's sim clock calls
``SimSession.tick()`` once per control period, which applies the target for 1/20 s of physics.

Usage::

    session = open_session(SimConfig(n_objects=(2, 2)), seed=0)   # registered as "default"
    head = make_camera({"type": "sim", "role": "head"})
    arm, hand = make_arm({"type": "sim"}), make_hand({"type": "sim"})
    ...
    close_session()

Importing this module registers the ``sim`` type for the camera, arm and hand kinds.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from inference_utils.devices.base import Arm, Camera, DeviceConfigError, DeviceConnectionError, Hand
from inference_utils.devices.factory import register_device
from inference_utils.devices.safety import (
    ARM_MAX_COMMAND_DT_S,
    ARM_MAX_JOINT_VEL_RAD_S,
    JointVelocityGuard,
    check_arm_within_limits,
    check_command_dt,
    check_joint_velocity_limit,
    clamp_hand,
)
from inference_utils.robot_spec import normalize_arm

_SESSIONS: dict[str, "SimSession"] = {}
_SESSIONS_LOCK = threading.Lock()


class SimSession:
    """One simulated world shared by the sim devices of a run.

    Holds the pending joint target (13-D: normalised arm + hand), steps the physics one control
    period per :meth:`tick` and renders the cameras at most once per tick (cached).
    """

    def __init__(self, config: Any, seed: int = 0, split: str | None = None) -> None:
        from sim import GraspEnv  # noqa: PLC0415 - heavy (MuJoCo / GL); only when a sim is used

        self.env = GraspEnv(config)
        self.seed, self.split = int(seed), split
        self.lock = threading.RLock()
        self.ticks = 0
        self.info: dict = {}
        self._target = np.zeros(13)       # (13,) normalised arm + hand target
        self._frames: dict | None = None
        self._frames_tick = -1

    @property
    def control_hz(self) -> float:
        """Control rate of one tick (Hz)."""
        return float(self.env.config.control_hz)

    @property
    def time(self) -> float:
        """Simulated time since the last reset (s)."""
        return self.ticks / self.control_hz

    def reset(self) -> dict:
        """Build the scene from ``seed`` / ``split``; the target becomes the current state."""
        with self.lock:
            _, self.info = self.env.reset(seed=self.seed, split=self.split)
            self._target = self.env.current_state().astype(np.float64)
            self.ticks, self._frames, self._frames_tick = 0, None, -1
            return self.info

    def set_arm_target(self, q_rad: np.ndarray) -> None:
        """Pending arm target (rad, (7,)); applied at the next :meth:`tick`."""
        with self.lock:
            self._target[:7] = np.clip(normalize_arm(q_rad), -1.0, 1.0)

    def set_hand_target(self, values: np.ndarray) -> None:
        """Pending hand target ((6,) in [0, 1]); applied at the next :meth:`tick`."""
        with self.lock:
            self._target[7:] = values

    def tick(self) -> None:
        """Advance one control period (1 / control_hz s of physics) toward the pending target."""
        with self.lock:
            _, _, _, _, self.info = self.env.step(self._target.astype(np.float32))
            self.ticks += 1

    def render(self) -> dict:
        """``{'head_bgr', 'wrist_bgr', 'head_seg'}`` of the current tick (rendered once per tick)."""
        with self.lock:
            if self._frames_tick != self.ticks or self._frames is None:
                self._frames = self.env.render_cameras()
                self._frames_tick = self.ticks
            return self._frames

    def object_for_mask(self, mask: np.ndarray) -> int | None:
        """Index of the object most covered by ``mask`` (bool (H, W)) in the head view, or None."""
        seg = self.render()["head_seg"]                       # (H, W) int, -1 = no object
        if mask.shape != seg.shape:
            return None
        hits = seg[np.asarray(mask, bool) & (seg >= 0)]
        if hits.size == 0:
            return None
        return int(np.bincount(hits).argmax())

    def close(self) -> None:
        """Release the renderer."""
        with self.lock:
            self.env.close()


def open_session(config: Any, seed: int = 0, split: str | None = None, name: str = "default") -> SimSession:
    """Create, reset and register a :class:`SimSession` under ``name`` (replacing an old one)."""
    session = SimSession(config, seed, split)
    session.reset()
    with _SESSIONS_LOCK:
        old = _SESSIONS.pop(name, None)
        _SESSIONS[name] = session
    if old is not None:
        old.close()
    return session


def get_session(name: str = "default") -> SimSession:
    """The registered session ``name``; raises DeviceConnectionError when there is none."""
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(name)
    if session is None:
        raise DeviceConnectionError(f"no simulator session {name!r} is open (robot needs a sim section)")
    return session


def close_session(name: str = "default") -> None:
    """Close and unregister session ``name`` (no-op when absent)."""
    with _SESSIONS_LOCK:
        session = _SESSIONS.pop(name, None)
    if session is not None:
        session.close()


class _SimDevice:
    """Connect/disconnect bookkeeping shared by the sim devices."""

    def __init__(self, session: str) -> None:
        if not isinstance(session, str) or not session:
            raise DeviceConfigError(f"session: expected a session name, got {session!r}")
        self.session_name = session
        self._session: SimSession | None = None

    @property
    def is_connected(self) -> bool:
        """True between connect() and disconnect()."""
        return self._session is not None

    def connect(self) -> None:
        """Attach to the registered simulator session."""
        if self._session is None:
            self._session = get_session(self.session_name)

    def disconnect(self) -> None:
        """Detach (the session itself is closed by its owner)."""
        self._session = None

    @property
    def session(self) -> SimSession:
        """The attached session (raises DeviceNotConnectedError when not connected)."""
        self._require_connected()
        return self._session


class SimCamera(_SimDevice, Camera):
    """Head or wrist camera of the simulator (BGR uint8 (H, W, 3))."""

    def __init__(self, role: str = "head", session: str = "default") -> None:
        if role not in ("head", "wrist"):
            raise DeviceConfigError(f"role: expected 'head' or 'wrist', got {role!r}")
        super().__init__(session)
        self.role = role
        self.label = f"SimCamera({role})"

    def connect(self) -> None:
        """Attach to the session and record the image size."""
        super().connect()
        cfg = self._session.env.config
        self.height, self.width = int(cfg.image_height), int(cfg.image_width)

    def read_with_timestamp(self) -> tuple[np.ndarray, float]:
        """``(image BGR uint8 (H, W, 3), sim time s)`` of the current tick."""
        s = self.session
        return s.render()[f"{self.role}_bgr"], s.time


class SimArm(_SimDevice, Arm):
    """Simulated 7-DoF arm with the same command limits as the real driver.

    ``send_joints`` follows :meth:`Arm.send_joints` on the simulator's clock: a target moves each
    joint at most ``max_joint_vel_rad_s * dt`` from the measured joints, ``dt`` being the
    simulated time since the previous command (capped at ``max_dt_s``).
    """

    def __init__(self, session: str = "default", max_joint_vel_rad_s: Any = None,
                 max_dt_s: float = ARM_MAX_COMMAND_DT_S) -> None:
        super().__init__(session)
        self.max_joint_vel_rad_s = check_joint_velocity_limit(
            ARM_MAX_JOINT_VEL_RAD_S if max_joint_vel_rad_s is None else max_joint_vel_rad_s)
        self.max_dt_s = check_command_dt(max_dt_s)
        self.label = "SimArm"
        self.command_guard = JointVelocityGuard(self.max_joint_vel_rad_s, self.max_dt_s, name="SimArm command")
        self._last: np.ndarray | None = None

    def connect(self) -> None:
        """Attach and take the measured joints as the last command."""
        super().connect()
        self.command_guard.reset()
        self._last = self.read_joints()

    def read_joints(self) -> np.ndarray:
        """Measured joints (rad, (7,))."""
        return self.session.env.arm_qpos()

    def _command_time(self) -> float:
        """Simulated time: the velocity limit is over simulated seconds."""
        return self.session.time

    def _command_joints(self, q_rad: np.ndarray) -> None:
        """Set the pending target (already limited by ``send_joints``)."""
        self.session.set_arm_target(q_rad)
        self._last = q_rad.copy()

    @property
    def last_commanded(self) -> np.ndarray | None:
        """The last target accepted by ``send_joints`` (or the held / reached position)."""
        return None if self._last is None else self._last.copy()

    def hold(self) -> np.ndarray:
        """Hold at the measured position (rad, (7,))."""
        q = self.read_joints()
        self.session.set_arm_target(q)
        self._last = q
        return q

    def move_to(self, q_rad: Any, duration_s: float = 2.0) -> np.ndarray:
        """Blocking min-jerk joint move; steps the simulator for ``duration_s`` of sim time."""
        target = check_arm_within_limits(q_rad, what="move_to target")
        s = self.session
        q0 = self.read_joints()
        n = max(1, int(round(float(duration_s) * s.control_hz)))
        for k in range(1, n + 1):
            u = k / n
            blend = u * u * u * (10 - 15 * u + 6 * u * u)
            s.set_arm_target(q0 + blend * (target - q0))
            s.tick()
        for _ in range(int(s.control_hz // 4)):  # settle
            s.tick()
        self._last = target.copy()
        return self.read_joints()

    def hand_height(self) -> float:
        """Height of the palm's underside above the table top (m)."""
        return self.session.env.hand_height()


class SimHand(_SimDevice, Hand):
    """Simulated 6-DoF hand (values in [0, 1], 1 = open)."""

    def __init__(self, session: str = "default") -> None:
        super().__init__(session)
        self.label = "SimHand"

    def read(self) -> np.ndarray:
        """Measured finger values in [0, 1], (6,)."""
        return self.session.env.hand_state()

    def send(self, values: Any) -> np.ndarray:
        """Clamp to [0, 1] and set the pending hand target; returns it."""
        sent = clamp_hand(values)
        self.session.set_hand_target(sent)
        return sent


register_device("camera", "sim", SimCamera, replace=True)
register_device("arm", "sim", SimArm, replace=True)
register_device("hand", "sim", SimHand, replace=True)
