"""Register-mapped 6-DoF hand driver over Modbus TCP or RTU (pymodbus client).

Normalised hand values ``[0, 1]`` map linearly to register angles ``0..1000`` (1000 = open).
The register map is configuration (:class:`HandRegisterMap`, Inspire RH56 by default).

TCP::

    hand = ModbusHand(host="192.168.11.210", port=6000)

RTU (RS-485 adapter)::

    hand = ModbusHand(serial_port="/dev/ttyUSB0", baudrate=115200)

Link state is never hidden: a transport failure on any request (socket error, connection closed
by the device, no or garbled response -- pymodbus ``ConnectionException`` /
``ModbusIOException``) closes the client, ``is_connected`` turns ``False`` and that call and every
later one raise :class:`DeviceLinkLostError` (a :class:`DeviceNotConnectedError` naming the
endpoint, ``host:port`` or the serial port) until ``connect()`` is called again; ``connect()``
tries up to ``1 + reconnect_attempts`` times, ``reconnect_delay_s`` apart. A Modbus exception
*response* (e.g. an unmapped register) means the device answered: it raises :class:`DeviceError`
and the link stays up.
"""
from __future__ import annotations

import inspect
import logging
import threading
import time
from typing import Any, Mapping, Sequence

import numpy as np

from inference_utils.devices.base import (
    DeviceConfigError,
    DeviceConnectionError,
    DeviceError,
    DeviceLinkLostError,
    Hand,
)
from inference_utils.devices.modbus_server import to_int16
from inference_utils.devices.register_map import VALUE_MAX, HandRegisterMap
from inference_utils.devices.safety import clamp_hand
from inference_utils.devices.validation import check_float, check_host, check_int, check_port

log = logging.getLogger(__name__)


def _check_value_block(value: Any, field: str) -> list[int]:
    """An int 0..1000, or 6 of them, -> list of 6 ints."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [check_int(value, field, 0, VALUE_MAX)] * 6
    try:
        items = list(value)
    except TypeError:
        raise DeviceConfigError(f"{field}: expected an int 0..1000 or 6 of them, got {value!r}") from None
    if len(items) != 6:
        raise DeviceConfigError(f"{field}: expected 6 values, got {len(items)}")
    return [check_int(v, f"{field}[{i}]", 0, VALUE_MAX) for i, v in enumerate(items)]


class ModbusHand(Hand):
    """Hand driver speaking Modbus holding registers (TCP or RTU)."""

    def __init__(
        self,
        host: str | None = None,
        port: int = 502,
        unit_id: int = 1,
        register_map: HandRegisterMap | Mapping[str, Any] | None = None,
        speed: int | Sequence[int] = 1000,
        force: int | Sequence[int] = 500,
        timeout_s: float = 0.5,
        retries: int = 1,
        reconnect_attempts: int = 3,
        reconnect_delay_s: float = 0.2,
        serial_port: str | None = None,
        baudrate: int = 115200,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        clear_errors_on_connect: bool = True,
    ):
        if (host is None) == (serial_port is None):
            raise DeviceConfigError("ModbusHand: give exactly one of host (TCP) or serial_port (RTU)")
        self.host = check_host(host) if host is not None else None
        self.port = check_port(port)
        if serial_port is not None and (not isinstance(serial_port, str) or not serial_port.strip()):
            raise DeviceConfigError(f"serial_port: expected a device path such as '/dev/ttyUSB0', got {serial_port!r}")
        self.serial_port = serial_port
        self.baudrate = check_int(baudrate, "baudrate", 1200, 4_000_000)
        if parity not in ("N", "E", "O"):
            raise DeviceConfigError(f"parity: expected 'N', 'E' or 'O', got {parity!r}")
        self.parity = parity
        self.stopbits = check_int(stopbits, "stopbits", 1, 2)
        self.bytesize = check_int(bytesize, "bytesize", 5, 8)
        self.unit_id = check_int(unit_id, "unit_id", 0, 247)
        self.register_map = HandRegisterMap.from_config(register_map)
        self.speed = _check_value_block(speed, "speed")
        self.force = _check_value_block(force, "force")
        self.timeout_s = check_float(timeout_s, "timeout_s", 0.0, 60.0, lo_open=True)
        self.retries = check_int(retries, "retries", 0, 10)
        self.reconnect_attempts = check_int(reconnect_attempts, "reconnect_attempts", 0, 100)
        self.reconnect_delay_s = check_float(reconnect_delay_s, "reconnect_delay_s", 0.0, 60.0)
        self.clear_errors_on_connect = bool(clear_errors_on_connect)
        self.endpoint = f"{self.host}:{self.port}" if self.host is not None else f"{serial_port}@{self.baudrate}"
        self.label = f"ModbusHand({self.endpoint})"
        self._lock = threading.RLock()
        self._client: Any = None
        self._id_kw: str | None = None
        self.last_sent: np.ndarray | None = None

    # -- life cycle -------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        """True between connect() and disconnect(), False once a request found the link dead."""
        return self._client is not None

    def _make_client(self) -> Any:
        from pymodbus.client import ModbusSerialClient, ModbusTcpClient

        common = {"timeout": self.timeout_s, "retries": self.retries}
        if self.host is not None:
            client = ModbusTcpClient(self.host, port=self.port, **common)
        else:
            client = ModbusSerialClient(
                self.serial_port, baudrate=self.baudrate, parity=self.parity,
                stopbits=self.stopbits, bytesize=self.bytesize, **common,
            )
        params = inspect.signature(client.read_holding_registers).parameters
        # pymodbus renamed the unit keyword ``slave`` -> ``device_id`` during 3.x.
        self._id_kw = "device_id" if "device_id" in params else ("slave" if "slave" in params else None)
        return client

    def _open_client(self) -> Any:
        """A connected pymodbus client; tries ``1 + reconnect_attempts`` times."""
        client = self._make_client()
        for attempt in range(self.reconnect_attempts + 1):
            if attempt:
                time.sleep(self.reconnect_delay_s)
            try:
                if client.connect():
                    return client
            except Exception:  # noqa: BLE001 - pymodbus/pyserial raise various errors; reported below
                pass
            client.close()
        raise DeviceConnectionError(
            f"{self.label}: cannot connect to {self.endpoint} "
            f"({self.reconnect_attempts + 1} attempt(s), {self.reconnect_delay_s} s apart)"
        )

    def connect(self) -> None:
        """Open the link, clear errors (optional), write speed and force set-points.

        The only way back after a dropped link: nothing reconnects implicitly.
        """
        with self._lock:
            if self._client is not None:
                return
            self._client = self._open_client()
            self._link_lost_reason = None
            try:
                if self.clear_errors_on_connect:
                    self.clear_errors()
                self.set_speed(self.speed)
                self.set_force(self.force)
                self._read_block("angle_act")
            except Exception:
                self.disconnect()
                raise

    def _close_client(self) -> Any:
        with self._lock:
            client, self._client = self._client, None
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing must never raise
                    pass
            return client

    def disconnect(self) -> None:
        """Close the link (idempotent)."""
        self._close_client()
        self._link_lost_reason = None

    def _link_lost(self, cause: BaseException | str) -> DeviceLinkLostError:
        """Close the client after a transport failure; returns the error to raise."""
        with self._lock:
            error = self._record_link_lost(cause)  # before is_connected turns False
            self._close_client()
        log.error("%s", error)
        return error

    # -- transport ----------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run one client request; a transport failure marks the link lost (no retry, no reconnect)."""
        from pymodbus.exceptions import ConnectionException, ModbusIOException

        with self._lock:
            self._require_connected()
            client = self._client
            if self._id_kw is not None:
                kwargs[self._id_kw] = self.unit_id
            try:
                if not client.connected:  # pymodbus would silently re-open it
                    raise ConnectionException(f"connection to {self.endpoint} is closed")
                response = getattr(client, method)(*args, **kwargs)
            except (ConnectionException, ModbusIOException, OSError) as exc:
                raise self._link_lost(exc) from exc
            if response is None or isinstance(response, ModbusIOException):
                raise self._link_lost(f"no response from {self.endpoint} to {method}")
            if response.isError():
                raise DeviceError(
                    f"{self.label}: {method}{args} refused by the device: {response}"
                )
            return response

    def _read_block(self, name: str) -> np.ndarray:
        address = getattr(self.register_map, name)
        count = self.register_map.block_size
        response = self._call("read_holding_registers", address, count=count)
        registers = list(response.registers)
        if len(registers) != count:
            raise DeviceError(f"{self.label}: expected {count} registers at {address}, got {len(registers)}")
        return np.array([to_int16(v) for v in registers], dtype=np.int64)

    def _write_block(self, name: str, values: Sequence[int]) -> None:
        address = getattr(self.register_map, name)
        self._call("write_registers", address, [int(v) & 0xFFFF for v in values])

    # -- commands -----------------------------------------------------------------------------
    def send(self, values: Any) -> np.ndarray:
        """Command finger targets in [0, 1] (clamped); returns the (quantised) values sent."""
        self._require_connected()
        clamped = clamp_hand(values)
        registers = np.rint(clamped * VALUE_MAX).astype(np.int64)
        self._write_block("angle_set", registers.tolist())
        sent = registers.astype(np.float64) / VALUE_MAX
        self.last_sent = sent
        return sent

    def read(self) -> np.ndarray:
        """Measured finger angles normalised to [0, 1]."""
        return np.clip(self._read_block("angle_act").astype(np.float64) / VALUE_MAX, 0.0, 1.0)

    def read_targets(self) -> np.ndarray:
        """The angle targets currently held by the device, normalised to [0, 1]."""
        return np.clip(self._read_block("angle_set").astype(np.float64) / VALUE_MAX, 0.0, 1.0)

    def set_speed(self, speed: int | Sequence[int]) -> list[int]:
        """Set finger speeds (0..1000, one value or 6); returns the registers written."""
        values = _check_value_block(speed, "speed")
        self._write_block("speed_set", values)
        self.speed = values
        return values

    def set_force(self, force: int | Sequence[int]) -> list[int]:
        """Set finger force thresholds (0..1000, one value or 6); returns the registers written."""
        values = _check_value_block(force, "force")
        self._write_block("force_set", values)
        self.force = values
        return values

    def clear_errors(self) -> None:
        """Write 1 to the clear-error register."""
        self._call("write_register", self.register_map.clear_error, 1)

    def read_force(self) -> np.ndarray:
        """Raw force readings (int16 per finger, device units)."""
        return self._read_block("force_act")

    def read_errors(self) -> np.ndarray:
        """Raw error codes per finger (0 = no error)."""
        return self._read_block("error")

    def read_status(self) -> np.ndarray:
        """Raw status codes per finger."""
        return self._read_block("status")

    def read_temperature(self) -> np.ndarray:
        """Actuator temperatures per finger (degrees C)."""
        return self._read_block("temp")

    def read_state(self) -> dict[str, np.ndarray]:
        """Angles (normalised), force, error, status and temperature in one dict."""
        return {
            "angles": self.read(),
            "force": self.read_force(),
            "error": self.read_errors(),
            "status": self.read_status(),
            "temperature": self.read_temperature(),
        }
