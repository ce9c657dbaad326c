"""The robot side of the loop: cameras, arm and hand behind one :class:`Environment`.

Devices are built per kind from ``cfg.robot.{camera_head, camera_wrist, arm, hand}`` through the
device factory (``type: sim | realsense | realman | modbus | ...``), so a run may mix simulated
and real devices (e.g. the simulator with a Modbus hand emulator). When any device is of type
``sim`` one :class:`~inference_utils.devices.sim_devices.SimSession` is opened and the control
clock steps it (:class:`SimClock`); otherwise the clock sleeps (:class:`RealClock`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from inference_utils.devices import make_arm, make_camera, make_hand
from inference_utils.devices import sim_devices
from inference_utils.devices.safety import as_finite_vector, check_arm_within_limits
from inference_utils.robot_spec import normalize_arm, unnormalize_arm
from inference_utils.runtime.clock import Clock, RealClock, SimClock, call_while_holding

DEVICE_KEYS = ("camera_head", "camera_wrist", "arm", "hand")


@dataclass
class Observation:
    """One synchronised reading of the robot.

    Attributes:
        head_bgr: uint8 (H, W, 3) head camera image, BGR.
        wrist_bgr: uint8 (H, W, 3) wrist camera image, BGR.
        state: float32 (13,) -- normalised arm joints (7) + hand values (6).
        time_s: clock time of the reading (s; simulated time on the simulator).
    """

    head_bgr: np.ndarray
    wrist_bgr: np.ndarray
    state: np.ndarray
    time_s: float


def sim_config_from(cfg_sim: Mapping[str, Any], control_hz: float) -> Any:
    """Build a validated :class:`sim.SimConfig` from the ``sim`` config section."""
    from sim import SimConfig  # noqa: PLC0415

    return SimConfig(
        n_objects=tuple(int(v) for v in cfg_sim["n_objects"]),
        clutter=str(cfg_sim.get("clutter", "normal")),
        split=str(cfg_sim.get("split", "train")),
        image_height=int(cfg_sim.get("image_height", 480)),
        image_width=int(cfg_sim.get("image_width", 640)),
        camera_jitter=bool(cfg_sim.get("camera_jitter", True)),
        rolling_friction=bool(cfg_sim.get("rolling_friction", False)),
        control_hz=float(control_hz),
        time_limit_s=1.0e6,           # the loop enforces its own limits
        terminate_on_success=False,
        render_observations=False,    # cameras are rendered on demand by the sim devices
    )


class Environment:
    """Cameras + arm + hand + control clock.

    Args:
        robot_cfg: the ``robot`` config section (device configs, poses, move durations).
        sim_cfg: the ``sim`` config section (used only when a device is of type ``sim``).
        control_hz: control rate (Hz).
        log: logger for device events.
    """

    def __init__(self, robot_cfg: Mapping[str, Any], sim_cfg: Mapping[str, Any] | None, control_hz: float,
                 log: logging.Logger | None = None) -> None:
        self.cfg = robot_cfg
        self.log = log or logging.getLogger(__name__)
        self.control_hz = float(control_hz)
        self.uses_sim = any(robot_cfg[k]["type"] == "sim" for k in DEVICE_KEYS)
        self.sim_config = sim_config_from(sim_cfg, control_hz) if self.uses_sim else None
        self.sim_seed = int(sim_cfg.get("seed", 0)) if self.uses_sim else 0
        # Constructing validates every device parameter; nothing connects or moves yet.
        self.camera_head = make_camera(robot_cfg["camera_head"])
        self.camera_wrist = make_camera(robot_cfg["camera_wrist"])
        self.arm = make_arm(robot_cfg["arm"])
        self.hand = make_hand(robot_cfg["hand"])
        poses = robot_cfg["poses"]
        self.poses = {name: check_arm_within_limits(q, what=f"robot.poses.{name}")
                      for name, q in poses.items() if q is not None}
        if "home" not in self.poses:
            raise ValueError("robot.poses.home: a home pose is required")
        self.sim_session: sim_devices.SimSession | None = None
        self.clock: Clock | None = None
        self._connected: list[Any] = []

    @property
    def devices(self) -> list[Any]:
        """All devices in connection order."""
        return [self.camera_head, self.camera_wrist, self.arm, self.hand]

    def connect(self) -> None:
        """Open the simulator (if used) and connect every device; on failure undo and raise."""
        try:
            if self.uses_sim:
                self.sim_session = sim_devices.open_session(self.sim_config, seed=self.sim_seed)
                self.clock = SimClock(self.sim_session)
            else:
                self.clock = RealClock(self.control_hz)
            for device in self.devices:
                self.log.info("connecting %s", device.label)
                device.connect()
                self._connected.append(device)
            if self.sim_session is not None:
                for _ in range(2):  # settle: let the hand/arm targets take effect
                    self.sim_session.tick()
        except BaseException:
            self.disconnect()
            raise

    def disconnect(self) -> None:
        """Disconnect every connected device (never raises) and close the simulator."""
        for device in reversed(self._connected):
            try:
                device.disconnect()
            except Exception as exc:  # noqa: BLE001 - disconnecting must not hide the real cause
                self.log.warning("disconnecting %s failed: %s", device.label, exc)
        self._connected.clear()
        if self.sim_session is not None:
            sim_devices.close_session()
            self.sim_session = None

    # ------------------------------------------------------------------ sensing
    def state(self) -> np.ndarray:
        """float32 (13,): normalised arm joints + hand values."""
        q = self.arm.read_joints()                      # (7,) rad
        hand = self.hand.read()                         # (6,) in [0, 1]
        return np.concatenate([normalize_arm(q), hand]).astype(np.float32)

    def observe(self) -> Observation:
        """Read both cameras and the joint state."""
        head = self.camera_head.read()                  # (H, W, 3) uint8 BGR
        wrist = self.camera_wrist.read()                # (H, W, 3) uint8 BGR
        return Observation(head, wrist, self.state(), self.clock.now())

    def hand_height(self) -> float:
        """Palm height (m): the simulator's palm height above the table, or the arm's tool z."""
        if hasattr(self.arm, "hand_height"):
            return float(self.arm.hand_height())
        return float(self.arm.read_pose()[2]) + float(self.cfg.get("height_offset_m", 0.0))

    def heartbeat(self) -> None:
        """Poll the arm and hand so that a device that stopped answering raises now."""
        self.arm.read_joints()
        self.hand.read()

    # ------------------------------------------------------------------ acting
    def apply(self, action: np.ndarray) -> np.ndarray:
        """Send one 13-D action (normalised arm + hand); returns what was sent in the same layout."""
        a = as_finite_vector(action, 13, "action")                          # (13,)
        q = self.arm.send_joints(unnormalize_arm(np.clip(a[:7], -1.0, 1.0)))  # (7,) rad
        hand = self.hand.send(a[7:])                                         # (6,)
        return np.concatenate([normalize_arm(q), hand]).astype(np.float32)

    def tick(self) -> None:
        """Wait for (real robot) or simulate (sim) one control period."""
        self.clock.tick()

    def now(self) -> float:
        """Clock time (s)."""
        return self.clock.now()

    def call(self, fn, name: str = "work"):
        """Run slow work without starving the device stream (see :func:`call_while_holding`)."""
        return call_while_holding(fn, self.clock, self.heartbeat, name)

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass at the control rate (targets unchanged)."""
        for _ in range(max(1, int(round(seconds * self.control_hz)))):
            self.tick()

    def hold(self) -> np.ndarray:
        """Stop streaming and hold the arm where it is; returns the held joints (rad)."""
        return self.arm.hold()

    def move_to_pose(self, name: str) -> np.ndarray:
        """Blocking joint move to a configured pose (``robot.poses.<name>``)."""
        duration = float(self.cfg.get("move_duration_s", 3.0))
        self.log.info("moving arm to pose '%s' (%.1f s)", name, duration)
        self.arm.hold()
        return self.arm.move_to(self.poses[name], duration)

    def open_hand(self) -> None:
        """Open the hand and wait ``robot.hand_open_wait_s`` for it."""
        self.hand.open()
        self.wait(float(self.cfg.get("hand_open_wait_s", 1.0)))

    def safe_stop(self) -> None:
        """Stop commanding motion: hold the arm (the hand keeps its last target). Never raises."""
        try:
            if self.arm.is_connected:
                q = self.arm.hold()
                self.log.warning("arm held at %s rad", np.round(q, 3).tolist())
        except Exception as exc:  # noqa: BLE001 - best effort during a fault
            self.log.error("could not hold the arm: %s", exc)
