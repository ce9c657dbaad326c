"""Device interfaces shared by real drivers and simulated devices.

Three device kinds are used by the runtime loop:

* :class:`Camera` -- ``read()`` returns a ``uint8`` BGR image ``(H, W, 3)``.
* :class:`Arm` -- 7 joints in radians; ``send_joints`` clamps to the joint limits and to the
  maximum step per command and returns what was actually sent.
* :class:`Hand` -- 6 values in ``[0, 1]`` (1 = open); ``send`` clamps and returns what was sent.

Every device supports ``connect()`` / ``disconnect()`` / ``is_connected`` and the context-manager
protocol (``with make_hand(cfg) as hand: ...``). Calling a read/send method on a device that is
not connected raises :class:`DeviceNotConnectedError`.
"""
from __future__ import annotations

import abc
from typing import Any

import numpy as np

from inference_utils.robot_spec import ARM_DOF, HAND_DOF, HAND_OPEN


class DeviceError(RuntimeError):
    """Base class of every device-layer error."""


class DeviceNotConnectedError(DeviceError):
    """A read/send method was called before ``connect()`` (or after ``disconnect()``)."""


class DeviceConnectionError(DeviceError):
    """The link to the device could not be opened, or dropped and could not be re-established."""


class DeviceTimeoutError(DeviceError):
    """The device did not answer (or deliver a frame) within its timeout."""


class DeviceSafetyError(DeviceError):
    """A command was refused because it is unsafe (NaN, wrong shape, out of limits...)."""


class DeviceConfigError(DeviceError, ValueError):
    """A configuration value is invalid; raised at construction, before any motion."""


class Device(abc.ABC):
    """Common life cycle of every device: connect, disconnect, context manager."""

    #: Human-readable label used in error messages (e.g. ``"ModbusHand(127.0.0.1:5020)"``).
    label: str = "device"

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the link to the device. Idempotent: connecting twice is a no-op."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Close the link. Idempotent and never raises for an already closed device."""

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        """``True`` between a successful ``connect()`` and ``disconnect()``."""

    def _require_connected(self) -> None:
        """Raise :class:`DeviceNotConnectedError` unless the device is connected."""
        if not self.is_connected:
            raise DeviceNotConnectedError(f"{self.label} is not connected; call connect() first")

    def __enter__(self) -> "Device":
        self.connect()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        state = "connected" if self.is_connected else "disconnected"
        return f"<{self.label} {state}>"


class Camera(Device):
    """A colour camera delivering BGR ``uint8`` images."""

    width: int
    height: int

    @abc.abstractmethod
    def read_with_timestamp(self) -> tuple[np.ndarray, float]:
        """Return ``(image, timestamp_s)``; image is ``uint8 (H, W, 3)`` BGR.

        Raises :class:`DeviceTimeoutError` when no frame arrives within the timeout.
        """

    def read(self) -> np.ndarray:
        """Return the next BGR ``uint8 (H, W, 3)`` image."""
        return self.read_with_timestamp()[0]


class Arm(Device):
    """A 7-DoF arm commanded in joint space (radians)."""

    dof: int = ARM_DOF

    @abc.abstractmethod
    def read_joints(self) -> np.ndarray:
        """Measured joint angles, ``float64 (7,)`` in radians."""

    @abc.abstractmethod
    def send_joints(self, q_target_rad: np.ndarray) -> np.ndarray:
        """Command a joint target (non-blocking streaming).

        The target is clamped to the joint limits and to the maximum step per command measured
        from the last commanded (or, after ``connect``/``hold``, the measured) position.
        Returns the target actually sent, ``float64 (7,)`` radians. Non-finite values or a wrong
        shape raise :class:`DeviceSafetyError`.
        """

    @abc.abstractmethod
    def hold(self) -> np.ndarray:
        """Stop streaming and hold the current position; returns that position (rad)."""

    @abc.abstractmethod
    def move_to(self, q_rad: np.ndarray, duration_s: float) -> np.ndarray:
        """Blocking joint-space move (home / placement poses); returns the reached joints."""


class Hand(Device):
    """A 6-DoF hand commanded with normalised values in ``[0, 1]`` (1 = open)."""

    dof: int = HAND_DOF

    @abc.abstractmethod
    def read(self) -> np.ndarray:
        """Measured finger positions, ``float64 (6,)`` in ``[0, 1]``."""

    @abc.abstractmethod
    def send(self, values: np.ndarray) -> np.ndarray:
        """Command 6 values; they are clamped to ``[0, 1]``; returns what was sent."""

    def open(self) -> np.ndarray:
        """Open the hand fully (all ones)."""
        return self.send(HAND_OPEN.copy())
