"""Device interfaces shared by real drivers and simulated devices.

Three device kinds are used by the runtime loop:

* :class:`Camera` -- ``read()`` returns a ``uint8`` BGR image ``(H, W, 3)``.
* :class:`Arm` -- 7 joints in radians; ``send_joints`` enforces the joint limits and a joint
  velocity limit against the *measured* joints (see :meth:`Arm.send_joints`) and returns what
  was actually sent.
* :class:`Hand` -- 6 values in ``[0, 1]`` (1 = open); ``send`` clamps and returns what was sent.

Every device supports ``connect()`` / ``disconnect()`` / ``is_connected`` and the context-manager
protocol (``with make_hand(cfg) as hand: ...``). Calling a read/send method on a device that is
not connected raises :class:`DeviceNotConnectedError`.

``is_connected`` reflects the link: when a read or send finds the link dead (socket error, end of
stream, Modbus transport error) the device closes its transport, ``is_connected`` becomes
``False`` and that call and every later read/send raise :class:`DeviceLinkLostError` (a
:class:`DeviceNotConnectedError`) until ``connect()`` is called again. Nothing reconnects
behind the caller's back.
"""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

import numpy as np

from inference_utils.robot_spec import ARM_DOF, HAND_DOF, HAND_OPEN

if TYPE_CHECKING:  # safety.py imports this module; the guard type is only needed for annotations
    from inference_utils.devices.safety import JointVelocityGuard


class DeviceError(RuntimeError):
    """Base class of every device-layer error."""


class DeviceNotConnectedError(DeviceError):
    """A read/send method was called before ``connect()`` (or after ``disconnect()``)."""


class DeviceConnectionError(DeviceError):
    """The link to the device could not be opened, or it failed."""


class DeviceLinkLostError(DeviceNotConnectedError, DeviceConnectionError):
    """The link dropped (socket error, end of stream, Modbus transport error).

    The device has closed its transport and reports ``is_connected == False``. The call that found
    the link dead and every later read/send raise this error until ``connect()`` succeeds again.
    It is both a :class:`DeviceNotConnectedError` (the device is not connected any more) and a
    :class:`DeviceConnectionError` (the link failed), so either ``except`` clause catches it.
    """


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

    #: Why the link was last lost (``None`` while connected, before the first connect, or after an
    #: explicit ``disconnect()``); set by :meth:`_record_link_lost`.
    _link_lost_reason: str | None = None

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        """``True`` between a successful ``connect()`` and ``disconnect()`` while the link is alive.

        Becomes ``False`` as soon as a read or send finds the link dead.
        """

    def _require_connected(self) -> None:
        """Raise :class:`DeviceNotConnectedError` unless the device is connected.

        After a dropped link the error is a :class:`DeviceLinkLostError` naming the cause.
        """
        if not self.is_connected:
            reason = self._link_lost_reason
            if reason is not None:
                raise DeviceLinkLostError(
                    f"{self.label}: link lost ({reason}); the device is disconnected, call connect() to reconnect"
                )
            raise DeviceNotConnectedError(f"{self.label} is not connected; call connect() first")

    def _record_link_lost(self, cause: BaseException | str) -> DeviceLinkLostError:
        """Remember why the link dropped (the first cause wins) and return the error to raise.

        Implementations call this when they close their transport after a failure (just before
        ``is_connected`` turns ``False``); ``connect()`` and ``disconnect()`` clear the record.
        """
        if self._link_lost_reason is None:
            text = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
            self._link_lost_reason = text or "unknown cause"
        return DeviceLinkLostError(
            f"{self.label}: link lost ({self._link_lost_reason}); the device is disconnected, "
            "call connect() to reconnect"
        )

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
    """A 7-DoF arm commanded in joint space (radians).

    Implementations provide :meth:`read_joints`, :meth:`_command_joints` and a
    :class:`~inference_utils.devices.safety.JointVelocityGuard` in :attr:`command_guard`; the
    safety rule of :meth:`send_joints` is implemented here once for every arm.
    """

    dof: int = ARM_DOF
    #: Limits every joint command (joint limits + joint velocity against the measured joints).
    command_guard: "JointVelocityGuard"

    @abc.abstractmethod
    def read_joints(self) -> np.ndarray:
        """Measured joint angles, ``float64 (7,)`` in radians."""

    def send_joints(self, q_target_rad: np.ndarray) -> np.ndarray:
        """Command a joint target; returns what was sent (rad, (7,)) without waiting for the motion.

        The target is clamped to the joint limits and then moved at most ``max_vel * dt`` per
        joint away from the joints *measured now* (one :meth:`read_joints` per call), where ``dt``
        is the time elapsed since the previous accepted command, capped at the guard's ``max_dt``
        (the first command after ``connect`` is credited ``max_dt``). Rapid calls therefore cannot
        add up to a large move, and a long pause does not allow a jump. Changed commands are
        counted and logged by :attr:`command_guard`. Non-finite values or a wrong shape raise
        :class:`DeviceSafetyError` before any I/O; a dead link raises
        :class:`DeviceNotConnectedError`.
        """
        self._require_connected()
        guard = self.command_guard
        target = guard.validate(q_target_rad)
        measured = self.read_joints()
        sent = guard.limit(target, measured, now=self._command_time())
        self._command_joints(sent)
        return sent

    def _command_time(self) -> float | None:
        """Clock reading for the velocity guard; ``None`` = the guard's own (monotonic) clock."""
        return None

    @abc.abstractmethod
    def _command_joints(self, q_rad: np.ndarray) -> None:
        """Hand an already limited joint target (rad, (7,)) to the arm."""

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
