"""Emulator of a RealMan arm controller speaking the JSON-over-TCP protocol.

Run it for bring-up without hardware::

    python -m inference_utils.arm_emulator --host 127.0.0.1 --port 8080

or from tests::

    emu = ArmEmulator(port=0).start()   # read emu.port
    ...
    emu.stop()

Supported commands: ``movej`` (kinematic motion at ``v`` percent of the maximum joint speed,
acknowledged with ``receive_state`` and finished with ``current_trajectory_state``),
``movej_canfd`` (no reply; a frame more than 10 degrees from the current joints, or outside the
joint limits, is rejected and counted in :attr:`violations`), ``get_joint_degree``,
``get_current_arm_state`` (pose from a simple RM75-like forward kinematics) and
``clear_system_err``. Every received message is recorded (:meth:`received`, :meth:`canfd_frames`)
and logged at INFO (logger ``inference_utils.arm_emulator``): connections and commands as they
come, the streamed ``movej_canfd`` frames and the polled state reads rate-limited (the first, then
one line per 2 s with the count).

It binds 127.0.0.1 unless told otherwise. A message line longer than :data:`MAX_LINE_BYTES`
(64 KiB) without a newline closes that client's connection (logged); the emulator keeps serving.
"""
from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
import time
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from inference_utils.devices import realman_protocol as proto
from inference_utils.emulator_log import RateLimitedLog, configure_cli_logging
from inference_utils.robot_spec import ARM_LOWER, ARM_UPPER
from inference_utils.stop_signals import install_stop_handlers

LOG = logging.getLogger(__name__)
# Longest message (one JSON line) a client may send; a longer line drops the connection.
MAX_LINE_BYTES = 64 * 1024

# Simple 7-DoF chain: joint axes alternate z, y; link offsets along the local z axis (m).
_AXES = "zyzyzyz"
_OFFSETS = (0.2405, 0.0, 0.256, 0.0, 0.210, 0.0, 0.144)


def forward_kinematics(q_rad: np.ndarray) -> np.ndarray:
    """Flange pose ``[x, y, z] (m) + xyz Euler (rad)`` of the emulator's simple chain."""
    rot = Rotation.identity()
    pos = np.zeros(3)
    for axis, offset, angle in zip(_AXES, _OFFSETS, np.asarray(q_rad, dtype=float)):
        rot = rot * Rotation.from_euler(axis, angle)
        pos = pos + rot.apply([0.0, 0.0, offset])
    return np.concatenate([pos, rot.as_euler("xyz")])


class _Handler(socketserver.StreamRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        emu = self.server.emulator
        send_lock = threading.Lock()
        emu._register(self.connection)
        LOG.info("arm emulator: client %s connected", _peer(self.client_address))

        def reply(message: dict[str, Any]) -> None:
            with send_lock:
                try:
                    self.connection.sendall(proto.encode(message))
                except OSError:
                    pass

        limit = self.server.max_line_bytes
        try:
            while True:
                raw = self.rfile.readline(limit + 1)  # never buffers more than one capped line
                if not raw:
                    break
                if len(raw) > limit and not raw.endswith(b"\n"):
                    LOG.warning("arm emulator: message from %s longer than %d bytes without a newline; "
                                "dropping the connection", self.client_address, limit)
                    break
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    message = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    reply({"state": "error", "error": "invalid JSON"})
                    continue
                emu.handle_message(message, reply)
        except OSError:
            pass
        finally:
            emu._unregister(self.connection)
            LOG.info("arm emulator: client %s disconnected", _peer(self.client_address))


def _peer(address: Any) -> str:
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return str(address)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    max_line_bytes = MAX_LINE_BYTES
    emulator: "ArmEmulator"


class ArmEmulator:
    """In-process RealMan controller emulator (thread-safe, loopback by default)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = proto.DEFAULT_PORT,
        initial_joints_rad: Any = None,
        max_joint_speed_deg_s: float = 180.0,
        max_canfd_step_deg: float = proto.CANFD_MAX_STEP_DEG,
        motion_hz: float = 100.0,
    ):
        self.host = host
        self._requested_port = port
        self.max_joint_speed_deg_s = float(max_joint_speed_deg_s)
        self.max_canfd_step_deg = float(max_canfd_step_deg)
        self.motion_hz = float(motion_hz)
        self._lock = threading.Lock()
        q0 = np.zeros(7) if initial_joints_rad is None else np.asarray(initial_joints_rad, dtype=float)
        self._joints_mdeg = np.asarray(proto.rad_to_wire(q0), dtype=np.float64)
        self._log: list[dict[str, Any]] = []
        self._canfd: list[tuple[float, list[int], bool]] = []
        self.violations = 0
        self.error_code = 0
        self._motion_cancel = threading.Event()
        self._motion_thread: threading.Thread | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._stream_log = RateLimitedLog(LOG, interval_s=2.0)  # streamed frames and polled state reads

    # -- life cycle -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """Bound port (useful with ``port=0``)."""
        return self._server.server_address[1] if self._server else self._requested_port

    def start(self) -> "ArmEmulator":
        """Serve in a background thread; returns ``self``."""
        if self._server is None:
            self._server = _Server((self.host, self._requested_port), _Handler)
            self._server.emulator = self
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="arm-emulator", daemon=True)
            self._thread.start()
            LOG.info("arm emulator: listening on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop serving and drop every client connection."""
        self._motion_cancel.set()
        server, self._server = self._server, None
        if server is None:
            return
        self._requested_port = server.server_address[1]
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def __enter__(self) -> "ArmEmulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _register(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _unregister(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    # -- inspection (tests) -------------------------------------------------------------------
    def joints_rad(self) -> np.ndarray:
        """Current joints (rad)."""
        with self._lock:
            return proto.wire_to_rad(self._joints_mdeg)

    def received(self, command: str | None = None) -> list[dict[str, Any]]:
        """Copy of the received messages (optionally only one command)."""
        with self._lock:
            return [m for m in self._log if command is None or m.get("command") == command]

    def canfd_frames(self) -> list[tuple[float, np.ndarray, bool]]:
        """``(time, joints rad, accepted)`` for every ``movej_canfd`` frame received."""
        with self._lock:
            return [(t, proto.wire_to_rad(j), ok) for t, j, ok in self._canfd]

    def inject_error(self, code: int = 0x5001) -> None:
        """Raise a system error; it is reported in ``err`` until ``clear_system_err``."""
        with self._lock:
            self.error_code = int(code)

    # -- protocol -----------------------------------------------------------------------------
    def handle_message(self, message: dict[str, Any], reply: Any) -> None:
        """Execute one decoded message; ``reply(dict)`` sends a response to its client."""
        command = message.get("command")
        with self._lock:
            if command != "movej_canfd":
                self._log.append(message)
        if command in ("movej_canfd", "get_joint_degree", "get_current_arm_state"):
            self._stream_log.event(f"arm emulator: {command}")  # streamed / polled at the control rate: rate-limited
        else:
            LOG.info("arm emulator: command %s %s", command,
                     {k: v for k, v in message.items() if k != "command"} if isinstance(message, dict) else "")
        if command == "movej_canfd":
            self._on_canfd(message)
        elif command == "get_joint_degree":
            with self._lock:
                joint = [int(round(v)) for v in self._joints_mdeg]
            reply({"state": "joint_degree", "joint": joint, "arm_err": 0, "sys_err": self.error_code})
        elif command == "get_current_arm_state":
            with self._lock:
                joint = [int(round(v)) for v in self._joints_mdeg]
                err = [self.error_code] if self.error_code else []
            pose = proto.pose_to_wire(forward_kinematics(proto.wire_to_rad(joint)))
            reply({"state": "current_arm_state",
                   "arm_state": {"joint": joint, "pose": pose, "arm_err": 0, "sys_err": self.error_code,
                                 "err": err}})
        elif command == "clear_system_err":
            with self._lock:
                self.error_code = 0
            reply({"state": "clear_state", "clear_state": True})
        elif command == "movej":
            self._on_movej(message, reply)
        else:
            reply({"state": "error", "error": f"unknown command {command!r}"})

    def _valid_joints(self, joint: Any) -> np.ndarray | None:
        try:
            arr = np.asarray(joint, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return None
        if arr.shape != (7,) or not np.all(np.isfinite(arr)):
            return None
        q = proto.wire_to_rad(arr)
        if np.any(q < ARM_LOWER - 1e-6) or np.any(q > ARM_UPPER + 1e-6):
            return None
        return arr

    def _on_canfd(self, message: dict[str, Any]) -> None:
        self._motion_cancel.set()  # streaming pre-empts a planned move
        joint = self._valid_joints(message.get("joint"))
        with self._lock:
            ok = joint is not None and self.error_code == 0
            if ok:
                step_deg = np.max(np.abs(joint - self._joints_mdeg)) / 1000.0
                ok = step_deg <= self.max_canfd_step_deg + 1e-3
            if ok:
                self._joints_mdeg = joint.copy()
            else:
                self.violations += 1
                LOG.warning("arm emulator: movej_canfd frame rejected (invalid, in error, or more than %.1f deg "
                            "from the current joints); %d rejected so far", self.max_canfd_step_deg, self.violations)
            raw = list(message.get("joint", [])) if isinstance(message.get("joint"), list) else []
            self._canfd.append((time.monotonic(), raw if joint is None else joint.tolist(), ok))

    def _on_movej(self, message: dict[str, Any], reply: Any) -> None:
        joint = self._valid_joints(message.get("joint"))
        speed = message.get("v")
        if joint is None or not isinstance(speed, (int, float)) or not 0 < speed <= 100 or self.error_code:
            LOG.info("arm emulator: movej refused (invalid joints or speed, or a system error)")
            reply({"receive_state": False})
            return
        if self._motion_thread is not None:
            self._motion_cancel.set()
            self._motion_thread.join(timeout=1.0)
        self._motion_cancel = threading.Event()
        reply({"receive_state": True})
        rate_mdeg_s = self.max_joint_speed_deg_s * 1000.0 * float(speed) / 100.0
        self._motion_thread = threading.Thread(
            target=self._run_movej, args=(joint, rate_mdeg_s, self._motion_cancel, reply), daemon=True)
        self._motion_thread.start()

    def _run_movej(self, target: np.ndarray, rate: float, cancel: threading.Event, reply: Any) -> None:
        with self._lock:
            start = self._joints_mdeg.copy()
        duration = float(np.max(np.abs(target - start))) / rate
        t0 = time.monotonic()
        while not cancel.wait(1.0 / self.motion_hz):
            frac = 1.0 if duration <= 0 else min(1.0, (time.monotonic() - t0) / duration)
            with self._lock:
                self._joints_mdeg = start + frac * (target - start)
            if frac >= 1.0:
                reply({"state": "current_trajectory_state", "trajectory_state": True, "device": 0,
                       "trajectory_connect": 0})
                return


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serve until Ctrl-C."""
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags; old underscore spellings accepted
    parser = cli_common.ArgumentParser(description="RealMan JSON-protocol arm emulator")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=proto.DEFAULT_PORT, help="TCP port (default 8080)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO (default: connections and commands), WARNING")
    args = parser.parse_args(argv)
    configure_cli_logging(args.log_level)
    emu = ArmEmulator(args.host, args.port).start()
    install_stop_handlers()  # Ctrl-C, kill -INT or kill -TERM stop it, however it was launched
    try:  # entered before announcing the port: a Ctrl-C right after the announcement still stops cleanly
        print(f"arm emulator serving on {emu.host}:{emu.port} (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


if __name__ == "__main__":
    main()
