"""RealMan 7-DoF arm driver (RM75) over the JSON-over-TCP protocol.

``send_joints`` is non-blocking: it clamps the target (joint limits, max step from the last
commanded position) and hands it to a background streaming thread, which interpolates each
target with a cubic spline (:class:`CubicStreamInterpolator`) and sends one ``movej_canfd``
frame per ``canfd_period_s``. Every frame is checked again against the limits and the 10 degree
per-frame bound before it leaves. ``move_to`` stops streaming and runs a planned ``movej``.

See :mod:`inference_utils.devices.realman_protocol` for the message formats and units assumed.
"""
from __future__ import annotations

import math
import queue
import socket
import threading
import time
from typing import Any

import numpy as np

from inference_utils.devices import realman_protocol as proto
from inference_utils.devices.base import (
    Arm,
    DeviceConfigError,
    DeviceConnectionError,
    DeviceError,
    DeviceTimeoutError,
)
from inference_utils.devices.interpolation import CubicStreamInterpolator
from inference_utils.devices.safety import check_arm_within_limits, clamp_arm_target
from inference_utils.devices.validation import check_float, check_host, check_int, check_port
from inference_utils.robot_spec import ARM_DOF, ARM_LOWER, ARM_MAX_STEP_RAD, ARM_UPPER


class RealManArm(Arm):
    """RealMan arm: joint streaming with spline interpolation, planned moves, state queries."""

    def __init__(
        self,
        host: str = "192.168.1.18",
        port: int = proto.DEFAULT_PORT,
        timeout_s: float = 2.0,
        canfd_period_s: float = 0.01,
        interpolation_num: int = 5,
        max_step_rad: float = float(ARM_MAX_STEP_RAD),
        lower: Any = None,
        upper: Any = None,
        max_joint_speed_deg_s: float = 180.0,
        follow: bool = True,
        clear_errors_on_connect: bool = True,
    ):
        self.host = check_host(host)
        self.port = check_port(port)
        self.timeout_s = check_float(timeout_s, "timeout_s", 0.0, 60.0, lo_open=True)
        self.canfd_period_s = check_float(canfd_period_s, "canfd_period_s", 0.001, 0.1)
        self.interpolation_num = check_int(interpolation_num, "interpolation_num", 1, 200)
        self.max_step_rad = check_float(max_step_rad, "max_step_rad", 0.0, float(ARM_MAX_STEP_RAD) + 1e-12,
                                        lo_open=True)
        self.lower = self._check_limits(ARM_LOWER if lower is None else lower, "lower")
        self.upper = self._check_limits(ARM_UPPER if upper is None else upper, "upper")
        if np.any(self.lower >= self.upper):
            raise DeviceConfigError("lower/upper: every lower joint limit must be below the upper one")
        if np.any(self.lower < ARM_LOWER - 1e-9) or np.any(self.upper > ARM_UPPER + 1e-9):
            raise DeviceConfigError("lower/upper: limits may only narrow the RM75 joint limits")
        self.max_joint_speed_deg_s = check_float(max_joint_speed_deg_s, "max_joint_speed_deg_s", 0.0, 360.0,
                                                 lo_open=True)
        self.follow = bool(follow)
        self.clear_errors_on_connect = bool(clear_errors_on_connect)
        self.endpoint = f"{self.host}:{self.port}"
        self.label = f"RealManArm({self.endpoint})"
        self._sock: socket.socket | None = None
        self._reader: proto.LineReader | None = None
        self._send_lock = threading.Lock()      # serialises writes on the socket
        self._request_lock = threading.Lock()   # one request/reply exchange at a time
        self._cmd_lock = threading.Lock()       # guards _last_commanded
        self._last_commanded: np.ndarray | None = None
        self._commands: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream_error: BaseException | None = None
        self._stream_frame: np.ndarray | None = None
        self.frames_sent = 0

    @staticmethod
    def _check_limits(values: Any, field: str) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.shape != (ARM_DOF,) or not np.all(np.isfinite(arr)):
            raise DeviceConfigError(f"{field}: expected {ARM_DOF} finite joint limits in rad, got {values!r}")
        return arr

    # -- life cycle -------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        """True while the TCP link is open."""
        return self._sock is not None

    def connect(self) -> None:
        """Open the link, optionally clear errors, and start the streaming thread."""
        if self._sock is not None:
            return
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as exc:
            raise DeviceConnectionError(f"{self.label}: cannot connect to {self.endpoint}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._reader = sock, proto.LineReader(sock)
        try:
            if self.clear_errors_on_connect:
                self.clear_errors()
            q = self.read_joints()
        except Exception:
            self.disconnect()
            raise
        self._interp = CubicStreamInterpolator(self.interpolation_num, self.canfd_period_s, ARM_DOF)
        self._interp.reset(q)
        with self._cmd_lock:
            self._last_commanded = q.copy()
        self._stream_error = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._stream_loop, name="realman-stream", daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        """Stop streaming and close the link (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._thread = None
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    # -- request / reply ------------------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> None:
        sock = self._sock
        if sock is None:
            self._require_connected()
        try:
            with self._send_lock:
                sock.sendall(proto.encode(message))
        except OSError as exc:
            raise DeviceConnectionError(f"{self.label}: link to {self.endpoint} failed: {exc}") from exc

    def _read_reply(self, expect: str, timeout_s: float, what: str) -> dict[str, Any]:
        """Read until a message whose ``state`` (or a key) is ``expect``; caller holds _request_lock."""
        try:
            return self._reader.read_until(lambda m: m.get("state") == expect or expect in m, timeout_s)
        except TimeoutError as exc:
            raise DeviceTimeoutError(f"{self.label}: no '{expect}' reply to {what} within {timeout_s:.1f} s") from exc
        except OSError as exc:
            raise DeviceConnectionError(f"{self.label}: link to {self.endpoint} failed: {exc}") from exc

    def _request(self, message: dict[str, Any], expect: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Send ``message`` and return the first reply whose ``state`` (or key) is ``expect``."""
        self._require_connected()
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        with self._request_lock:
            self._send(message)
            return self._read_reply(expect, timeout_s, message["command"])

    # -- state ------------------------------------------------------------------------------------
    def read_joints(self) -> np.ndarray:
        """Measured joints (rad, (7,))."""
        reply = self._request({"command": "get_joint_degree"}, "joint_degree")
        joints = proto.wire_to_rad(reply.get("joint", []))
        if joints.shape != (ARM_DOF,):
            raise DeviceError(f"{self.label}: joint_degree reply has {joints.size} joints: {reply}")
        return joints

    def read_state(self) -> dict[str, np.ndarray]:
        """``{'joints': rad (7,), 'pose': [x,y,z m, rx,ry,rz rad], 'errors': int array}``."""
        reply = self._request({"command": "get_current_arm_state"}, "current_arm_state")
        state = reply.get("arm_state", {})
        try:
            return {
                "joints": proto.wire_to_rad(state["joint"]),
                "pose": proto.wire_to_pose(state["pose"]),
                "errors": np.asarray(state.get("err", []), dtype=np.int64).reshape(-1),
            }
        except (KeyError, ValueError, TypeError) as exc:
            raise DeviceError(f"{self.label}: malformed current_arm_state reply {reply}: {exc}") from exc

    def read_pose(self) -> np.ndarray:
        """End-effector pose ``[x, y, z] (m) + [rx, ry, rz] (rad)``."""
        return self.read_state()["pose"]

    def clear_errors(self) -> None:
        """Clear the controller's system errors (``clear_system_err``)."""
        reply = self._request({"command": "clear_system_err"}, "clear_state")
        if not reply.get("clear_state", False):
            raise DeviceError(f"{self.label}: clear_system_err refused: {reply}")

    # -- streaming --------------------------------------------------------------------------------
    def _check_stream(self) -> None:
        self._require_connected()
        with self._cmd_lock:
            error = self._stream_error
        if error is not None:
            raise DeviceConnectionError(f"{self.label}: streaming to {self.endpoint} stopped: {error}") from error

    def send_joints(self, q_target_rad: Any) -> np.ndarray:
        """Queue a streaming target (non-blocking); returns the clamped target actually queued."""
        self._check_stream()
        with self._cmd_lock:
            sent = clamp_arm_target(q_target_rad, self._last_commanded, self.lower, self.upper,
                                    self.max_step_rad)
            self._last_commanded = sent.copy()
        self._commands.put(("target", sent))
        return sent

    @property
    def last_commanded(self) -> np.ndarray | None:
        """The last target accepted by ``send_joints`` (or the held position)."""
        with self._cmd_lock:
            return None if self._last_commanded is None else self._last_commanded.copy()

    def _reset_stream(self, q: np.ndarray | None) -> np.ndarray:
        """Ask the streaming thread to drop its plan and hold at ``q`` (None = where it is)."""
        self._check_stream()
        done = threading.Event()
        box: dict[str, np.ndarray] = {}
        self._commands.put(("reset", q, done, box))
        if not done.wait(timeout=max(1.0, 20 * self.canfd_period_s)):
            raise DeviceTimeoutError(f"{self.label}: streaming thread did not acknowledge the hold")
        held = box["position"]
        with self._cmd_lock:
            self._last_commanded = held.copy()
        return held

    def hold(self) -> np.ndarray:
        """Stop streaming and hold at the last streamed position; returns it (rad)."""
        return self._reset_stream(None)

    def _stream_loop(self) -> None:
        period = self.canfd_period_s
        interp = self._interp
        next_tick = time.monotonic()
        last_frame = interp.position
        try:
            while not self._stop.is_set():
                while True:
                    try:
                        command = self._commands.get_nowait()
                    except queue.Empty:
                        break
                    if command[0] == "target":
                        interp.set_target(command[1])
                    else:
                        _, q, done, box = command
                        interp.reset(interp.position if q is None else q)
                        last_frame = interp.position
                        box["position"] = last_frame.copy()
                        done.set()
                frame = interp.next_frame()
                if frame is not None:
                    # Final guard: limits and the per-frame bound, whatever the spline did.
                    frame = clamp_arm_target(frame, last_frame, self.lower, self.upper, ARM_MAX_STEP_RAD)
                    self._send(proto.movej_canfd(frame, self.follow))
                    last_frame = frame
                    with self._cmd_lock:
                        self._stream_frame = frame.copy()
                        self.frames_sent += 1
                next_tick += period
                delay = next_tick - time.monotonic()
                if delay < -period:  # fell behind (e.g. a GC pause): resynchronise
                    next_tick = time.monotonic()
                    delay = 0.0
                self._stop.wait(max(0.0, delay))
        except BaseException as exc:  # noqa: BLE001 - reported to the caller via _check_stream
            with self._cmd_lock:
                self._stream_error = exc

    # -- planned move -----------------------------------------------------------------------------
    def movej_speed_percent(self, q_from: np.ndarray, q_to: np.ndarray, duration_s: float) -> int:
        """Speed percentage making a ``movej`` last about ``duration_s``."""
        span_deg = float(np.max(np.abs(np.rad2deg(np.asarray(q_to) - np.asarray(q_from)))))
        needed = span_deg / (self.max_joint_speed_deg_s * duration_s) * 100.0
        return int(min(100, max(1, math.ceil(needed))))

    def move_to(self, q_rad: Any, duration_s: float = 3.0) -> np.ndarray:
        """Blocking planned move (``movej``) to ``q_rad`` (must lie within the limits)."""
        target = check_arm_within_limits(q_rad, self.lower, self.upper, "move_to target")
        duration_s = check_float(duration_s, "duration_s", 0.0, 600.0, lo_open=True)
        self.hold()
        q_now = self.read_joints()
        speed = self.movej_speed_percent(q_now, target, duration_s)
        with self._request_lock:  # the completion message must not be consumed by another request
            self._send(proto.movej(target, speed))
            ack = self._read_reply("receive_state", self.timeout_s, "movej")
            if not ack.get("receive_state", False):
                raise DeviceError(f"{self.label}: movej refused by the controller: {ack}")
            done = self._read_reply("current_trajectory_state", 2.0 * duration_s + 5.0, "movej")
        if not done.get("trajectory_state", False):
            raise DeviceError(f"{self.label}: movej did not complete: {done}")
        reached = self.read_joints()
        self._reset_stream(reached)
        return reached

    def stream_position(self) -> np.ndarray | None:
        """Joints of the last ``movej_canfd`` frame sent (rad), or None before the first one."""
        with self._cmd_lock:
            return None if self._stream_frame is None else self._stream_frame.copy()
