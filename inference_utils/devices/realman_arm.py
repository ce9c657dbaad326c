"""RealMan 7-DoF arm driver (RM75) over the JSON-over-TCP protocol.

``send_joints`` is non-blocking: it reads the measured joints back from the arm, limits the
target with the arm's :class:`~inference_utils.devices.safety.JointVelocityGuard` (joint limits,
and at most ``max_joint_vel_rad_s * dt`` per joint from the *measured* position, ``dt`` being
the time since the previous accepted command capped at ``max_dt_s``) and hands it to a background
streaming thread. The thread interpolates each target with a cubic spline
(:class:`CubicStreamInterpolator`) and sends one ``movej_canfd`` frame per ``canfd_period_s``;
every frame passes the same velocity rule again (a second guard with the same limits), measured
from the last frame sent over the real time since it was sent (capped at two periods, and at the
protocol's 10 degrees per frame), so the streamed motion never exceeds the velocity limit
whatever the spline or the caller does; frames the guard shortened are made up by further frames
toward the planned position. ``move_to`` stops streaming and runs a planned ``movej``.

A socket error or end of stream on any send or read closes the link: ``is_connected`` turns
``False`` and every later call raises :class:`DeviceLinkLostError` until ``connect()``.

See :mod:`inference_utils.devices.realman_protocol` for the message formats and units assumed.
"""
from __future__ import annotations

import logging
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
    DeviceLinkLostError,
    DeviceTimeoutError,
)
from inference_utils.devices.interpolation import CubicStreamInterpolator
from inference_utils.devices.safety import (
    ARM_MAX_COMMAND_DT_S,
    ARM_MAX_JOINT_VEL_RAD_S,
    JointVelocityGuard,
    check_arm_within_limits,
    check_command_dt,
    check_joint_velocity_limit,
)
from inference_utils.devices.validation import check_float, check_host, check_int, check_port
from inference_utils.robot_spec import ARM_DOF, ARM_LOWER, ARM_MAX_STEP_RAD, ARM_UPPER

log = logging.getLogger(__name__)
#: A streamed frame closer than this to the interpolator's position counts as having reached it.
_REACHED_TOL_RAD = 1e-9


class RealManArm(Arm):
    """RealMan arm: joint streaming with spline interpolation, planned moves, state queries.

    Safety parameters: ``lower`` / ``upper`` (may only narrow the RM75 joint limits),
    ``max_joint_vel_rad_s`` (one value or 7, rad/s, at most the rated joint speeds; default
    pi rad/s) and ``max_dt_s`` (cap on the time credited to one command, default 0.05 s).
    """

    def __init__(
        self,
        host: str = "192.168.1.18",
        port: int = proto.DEFAULT_PORT,
        timeout_s: float = 2.0,
        canfd_period_s: float = 0.01,
        interpolation_num: int = 5,
        max_joint_vel_rad_s: Any = None,
        max_dt_s: float = ARM_MAX_COMMAND_DT_S,
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
        self.max_joint_vel_rad_s = check_joint_velocity_limit(
            ARM_MAX_JOINT_VEL_RAD_S if max_joint_vel_rad_s is None else max_joint_vel_rad_s)
        self.max_dt_s = check_command_dt(max_dt_s)
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
        #: Limits every ``send_joints`` target against the measured joints.
        self.command_guard = JointVelocityGuard(
            self.max_joint_vel_rad_s, self.max_dt_s, self.lower, self.upper, name=f"{self.label} command")
        #: The same rule for every streamed frame, against the last frame sent (dt capped at two
        #: periods, and never more than the protocol's 10 degrees per frame).
        self.frame_guard = JointVelocityGuard(
            self.max_joint_vel_rad_s, 2.0 * self.canfd_period_s, self.lower, self.upper,
            max_step_rad=float(ARM_MAX_STEP_RAD), name=f"{self.label} stream frame", log_level=logging.INFO)
        self._sock: socket.socket | None = None
        self._reader: proto.LineReader | None = None
        self._link_lock = threading.Lock()      # guards _sock swaps (connect / link loss / disconnect)
        self._send_lock = threading.Lock()      # serialises writes on the socket
        self._request_lock = threading.Lock()   # one request/reply exchange at a time
        self._cmd_lock = threading.Lock()       # guards _last_commanded, _stream_frame, frames_sent
        self._last_commanded: np.ndarray | None = None
        self._commands: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
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
        """True while the TCP link is open; False after ``disconnect()`` or once the link dropped."""
        return self._sock is not None

    def connect(self) -> None:
        """Open the link, optionally clear errors, and start the streaming thread.

        Also the only way back after a dropped link (nothing reconnects implicitly).
        """
        if self._sock is not None:
            return
        self._join_stream_thread()  # a thread left over from a dropped link must be gone first
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as exc:
            raise DeviceConnectionError(f"{self.label}: cannot connect to {self.endpoint}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._link_lock:
            self._sock, self._reader = sock, proto.LineReader(sock)
            self._link_lost_reason = None
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
            self._stream_frame = None
        self.command_guard.reset()
        self.frame_guard.reset()
        self._commands = queue.Queue()  # no stale target from before a dropped link
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._stream_loop, args=(self._stop, self._commands, sock),
                                        name="realman-stream", daemon=True)
        self._thread.start()

    def _join_stream_thread(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        self._thread = None

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        """Close ``sock``, waking any thread blocked reading it."""
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass

    def disconnect(self) -> None:
        """Stop streaming and close the link (idempotent)."""
        self._join_stream_thread()
        with self._link_lock:
            sock, self._sock = self._sock, None
            self._link_lost_reason = None
        if sock is not None:
            self._shutdown(sock)

    def _link_lost(self, cause: BaseException | str, failed: socket.socket | None = None) -> DeviceLinkLostError:
        """Close the transport after a failure on the link; returns the error to raise.

        ``failed`` is the socket the failure happened on, when the caller knows it: a socket that
        is no longer the current one (a link already replaced by ``connect()``) is left alone.
        """
        with self._link_lock:
            sock = self._sock
            if sock is not None and failed is not None and failed is not sock:
                sock = None  # stale failure: the current link is not affected
            elif sock is not None:  # first to notice: record why, then mark disconnected
                self._stop.set()  # the streaming thread must not outlive its link
                error = self._record_link_lost(cause)
                self._sock = None
        if sock is not None:
            self._shutdown(sock)
            log.error("%s", error)
            return error
        if self._link_lost_reason is not None:  # already recorded (e.g. by the streaming thread)
            return self._record_link_lost(cause)
        # closed by an explicit disconnect() while this call was in flight
        return DeviceLinkLostError(f"{self.label}: link to {self.endpoint} closed during the call ({cause})")

    # -- request / reply ------------------------------------------------------------------------
    def _send(self, message: dict[str, Any], sock: socket.socket | None = None) -> None:
        """Write one message on ``sock`` (default: the current link)."""
        sock = self._sock if sock is None else sock
        if sock is None:
            self._require_connected()
        try:
            with self._send_lock:
                sock.sendall(proto.encode(message))
        except OSError as exc:
            raise self._link_lost(exc, sock) from exc

    def _read_reply(self, expect: str, timeout_s: float, what: str) -> dict[str, Any]:
        """Read until a message whose ``state`` (or a key) is ``expect``; caller holds _request_lock."""
        reader = self._reader
        if reader is None or self._sock is None:
            self._require_connected()
        try:
            return reader.read_until(lambda m: m.get("state") == expect or expect in m, timeout_s)
        except TimeoutError as exc:
            raise DeviceTimeoutError(f"{self.label}: no '{expect}' reply to {what} within {timeout_s:.1f} s") from exc
        except OSError as exc:  # includes ConnectionError("connection closed by peer") on EOF
            raise self._link_lost(exc) from exc

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
        if joints.shape != (ARM_DOF,) or not np.all(np.isfinite(joints)):
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
    def _command_joints(self, q_rad: np.ndarray) -> None:
        """Queue an already limited target for the streaming thread (see ``Arm.send_joints``)."""
        with self._cmd_lock:
            self._last_commanded = q_rad.copy()
        self._commands.put(("target", q_rad.copy()))

    @property
    def last_commanded(self) -> np.ndarray | None:
        """The last target accepted by ``send_joints`` (or the held position)."""
        with self._cmd_lock:
            return None if self._last_commanded is None else self._last_commanded.copy()

    @property
    def clamped_commands(self) -> int:
        """How many ``send_joints`` targets were changed by the limits or the velocity limit."""
        return self.command_guard.clamped_count

    @property
    def clamped_frames(self) -> int:
        """How many streamed frames were changed by the per-frame velocity guard."""
        return self.frame_guard.clamped_count

    def _reset_stream(self, q: np.ndarray | None) -> np.ndarray:
        """Ask the streaming thread to drop its plan and hold at ``q`` (None = the last frame sent)."""
        self._require_connected()
        done = threading.Event()
        box: dict[str, np.ndarray] = {}
        self._commands.put(("reset", q, done, box))
        if not done.wait(timeout=max(1.0, 20 * self.canfd_period_s)):
            self._require_connected()  # the thread stopped because the link dropped
            raise DeviceTimeoutError(f"{self.label}: streaming thread did not acknowledge the hold")
        held = box["position"]
        with self._cmd_lock:
            self._last_commanded = held.copy()
        return held

    def hold(self) -> np.ndarray:
        """Stop streaming and hold at the last streamed position; returns it (rad)."""
        return self._reset_stream(None)

    def _stream_loop(self, stop: threading.Event, commands: queue.Queue, sock: socket.socket) -> None:
        period = self.canfd_period_s
        interp = self._interp
        guard = self.frame_guard
        next_tick = time.monotonic()
        last_frame = interp.position
        last_sent_at: float | None = None
        try:
            while not stop.is_set():
                while True:
                    try:
                        command = commands.get_nowait()
                    except queue.Empty:
                        break
                    if command[0] == "target":
                        interp.set_target(command[1])
                    else:
                        _, q, done, box = command
                        interp.reset(last_frame if q is None else q)
                        last_frame = interp.position
                        box["position"] = last_frame.copy()
                        done.set()
                frame = interp.next_frame()
                if frame is None and np.max(np.abs(interp.position - last_frame)) > _REACHED_TOL_RAD:
                    frame = interp.position  # frames were clamped: keep going to the planned position
                if frame is not None:
                    # The velocity rule again, per frame, from the last frame actually sent.
                    now = time.monotonic()
                    frame = guard.limit(frame, last_frame, now=now)
                    self._send(proto.movej_canfd(frame, self.follow), sock)
                    last_frame, last_sent_at = frame, now
                    with self._cmd_lock:
                        self._stream_frame = frame.copy()
                        self.frames_sent += 1
                next_tick += period
                if last_sent_at is not None:  # catching up, frames stay at least half a period apart
                    next_tick = max(next_tick, last_sent_at + 0.5 * period)
                delay = next_tick - time.monotonic()
                if delay < -period:  # fell behind (e.g. a GC pause): resynchronise
                    next_tick = time.monotonic()
                    delay = 0.0
                stop.wait(max(0.0, delay))
        except BaseException as exc:  # noqa: BLE001 - any failure ends streaming and closes its link
            if not isinstance(exc, DeviceLinkLostError):  # (that one was recorded where it was raised)
                self._link_lost(exc, sock)

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

    def safety_stats(self) -> dict[str, dict[str, int]]:
        """Counters of both guards: ``{'commands': {...}, 'frames': {...}}`` (see ``JointVelocityGuard.stats``)."""
        return {"commands": self.command_guard.stats(), "frames": self.frame_guard.stats()}
