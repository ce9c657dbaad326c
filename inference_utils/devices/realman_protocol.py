"""RealMan arm JSON-over-TCP protocol: units, message building and line framing.

Shared by :class:`~inference_utils.devices.realman_arm.RealManArm` and the emulator.

Assumptions (from RealMan's public JSON protocol documentation and example clients):

* Messages are JSON objects terminated by ``"\\r\\n"``; the controller listens on TCP 8080.
* Joint angles travel as integers in 0.001 degree.
* ``pose`` is ``[x, y, z, rx, ry, rz]`` with positions in 0.001 mm (micrometres) and Euler
  angles in 0.001 rad.
* ``movej`` answers ``{"receive_state": true}`` on acceptance, then later
  ``{"state": "current_trajectory_state", "trajectory_state": true, ...}`` when the motion ends.
* ``movej_canfd`` (CAN FD pass-through streaming, ~10 ms period, at most 10 degrees per
  frame) has no reply.
* ``get_joint_degree`` -> ``{"state": "joint_degree", "joint": [...]}``;
  ``get_current_arm_state`` -> ``{"state": "current_arm_state", "arm_state": {"joint": [...],
  "pose": [...], "err": [...]}}``; ``clear_system_err`` -> ``{"state": "clear_state",
  "clear_state": true}``.
"""
from __future__ import annotations

import json
import math
import socket
import time
from typing import Any, Callable

import numpy as np

DEFAULT_PORT = 8080
MILLIDEG_PER_RAD = 180000.0 / math.pi
#: Pose position unit on the wire: 0.001 mm, i.e. 1e-6 m.
POSE_POSITION_M_PER_UNIT = 1e-6
#: Pose orientation unit on the wire: 0.001 rad.
POSE_ANGLE_RAD_PER_UNIT = 1e-3
#: Hard limit of one ``movej_canfd`` frame (degrees).
CANFD_MAX_STEP_DEG = 10.0
TERMINATOR = b"\r\n"


def rad_to_wire(q_rad: Any) -> list[int]:
    """Joint angles in rad -> list of ints in 0.001 degree."""
    return [int(round(float(v) * MILLIDEG_PER_RAD)) for v in np.asarray(q_rad, dtype=float).reshape(-1)]


def wire_to_rad(joint: Any) -> np.ndarray:
    """List of 0.001-degree ints -> float64 array in rad."""
    return np.asarray(joint, dtype=np.float64).reshape(-1) / MILLIDEG_PER_RAD


def wire_to_pose(pose: Any) -> np.ndarray:
    """Wire pose -> ``[x, y, z] (m) + [rx, ry, rz] (rad)`` float64 (6,)."""
    arr = np.asarray(pose, dtype=np.float64).reshape(-1)
    if arr.size != 6:
        raise ValueError(f"pose must have 6 entries, got {arr.size}")
    return np.concatenate([arr[:3] * POSE_POSITION_M_PER_UNIT, arr[3:] * POSE_ANGLE_RAD_PER_UNIT])


def pose_to_wire(pose: Any) -> list[int]:
    """``[x, y, z] (m) + [rx, ry, rz] (rad)`` -> wire ints."""
    arr = np.asarray(pose, dtype=np.float64).reshape(-1)
    return [int(round(v / POSE_POSITION_M_PER_UNIT)) for v in arr[:3]] + [
        int(round(v / POSE_ANGLE_RAD_PER_UNIT)) for v in arr[3:]
    ]


def encode(message: dict[str, Any]) -> bytes:
    """One protocol message as bytes (compact JSON + CRLF)."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + TERMINATOR


def movej(q_rad: Any, speed_percent: int) -> dict[str, Any]:
    """Planned joint move command."""
    return {"command": "movej", "joint": rad_to_wire(q_rad), "v": int(speed_percent), "r": 0,
            "trajectory_connect": 0}


def movej_canfd(q_rad: Any, follow: bool = True) -> dict[str, Any]:
    """Streaming joint pass-through frame (no reply)."""
    return {"command": "movej_canfd", "joint": rad_to_wire(q_rad), "follow": bool(follow)}


#: Longest reply line the driver buffers (the arm's replies are a few hundred bytes). A peer that
#: sends more without a newline is treated as a broken link rather than grown into memory.
MAX_LINE_BYTES = 64 * 1024


class LineReader:
    """Splits a socket's byte stream into decoded JSON messages.

    Lines that are not valid JSON objects are skipped (counted in :attr:`garbage`); a line longer
    than ``max_line_bytes`` raises ``ConnectionError`` (the driver then marks the link lost).
    """

    def __init__(self, sock: socket.socket, max_line_bytes: int = MAX_LINE_BYTES):
        self.sock = sock
        self.max_line_bytes = int(max_line_bytes)
        self._buffer = bytearray()
        self.garbage = 0

    def _pop_line(self) -> dict[str, Any] | None:
        while True:
            idx = self._buffer.find(b"\n")
            if idx < 0:
                return None
            raw = bytes(self._buffer[:idx]).strip()
            del self._buffer[: idx + 1]
            if not raw:
                continue
            try:
                message = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                self.garbage += 1
                continue
            if isinstance(message, dict):
                return message
            self.garbage += 1

    def read(self, timeout_s: float) -> dict[str, Any]:
        """Next message; raises ``TimeoutError`` after ``timeout_s`` or ``ConnectionError`` on EOF."""
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._pop_line()
            if message is not None:
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no message within timeout")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout as exc:
                raise TimeoutError("no message within timeout") from exc
            if not chunk:
                raise ConnectionError("connection closed by peer")
            self._buffer.extend(chunk)
            if len(self._buffer) > self.max_line_bytes and self._buffer.find(b"\n") < 0:
                size = len(self._buffer)
                self._buffer.clear()
                raise ConnectionError(f"the arm sent {size} bytes without a line break (limit "
                                      f"{self.max_line_bytes} bytes): not the arm's JSON protocol")

    def read_until(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
        """Read messages until ``predicate(message)``; others are discarded."""
        deadline = time.monotonic() + timeout_s
        while True:
            message = self.read(max(0.0, deadline - time.monotonic()))
            if predicate(message):
                return message
