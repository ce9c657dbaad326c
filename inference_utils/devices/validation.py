"""Validation of device configuration values; every error names the offending field."""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from inference_utils.devices.base import DeviceConfigError

_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def check_host(value: Any, field: str = "host") -> str:
    """An IPv4/IPv6 address or a DNS host name."""
    if not isinstance(value, str) or not value.strip():
        raise DeviceConfigError(f"{field}: expected an IP address or host name, got {value!r}")
    value = value.strip()
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    # A dotted-number string that failed to parse as an IP is a malformed IP, not a host name.
    if re.fullmatch(r"[0-9.]+", value) or not _HOSTNAME_RE.match(value):
        raise DeviceConfigError(f"{field}: {value!r} is not a valid IP address or host name")
    return value


def check_int(value: Any, field: str, lo: int, hi: int) -> int:
    """An integer in ``[lo, hi]`` (bools and non-integral floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise DeviceConfigError(f"{field}: expected an integer in [{lo}, {hi}], got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise DeviceConfigError(f"{field}: {value} is out of range [{lo}, {hi}]")
    return value


def check_port(value: Any, field: str = "port") -> int:
    """A TCP port in ``[1, 65535]``."""
    return check_int(value, field, 1, 65535)


def check_float(value: Any, field: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """A finite number in ``[lo, hi]`` (or ``(lo, hi]`` if ``lo_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DeviceConfigError(f"{field}: expected a number, got {value!r}")
    value = float(value)
    low_ok = value > lo if lo_open else value >= lo
    if not (low_ok and value <= hi):
        bracket = "(" if lo_open else "["
        raise DeviceConfigError(f"{field}: {value} is out of range {bracket}{lo}, {hi}]")
    return value


def check_serial(value: Any, field: str = "serial") -> str | None:
    """A RealSense serial number (digits, optionally letters), or ``None`` for 'first found'."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]{4,32}", value.strip()):
        raise DeviceConfigError(
            f"{field}: expected a device serial number such as '123622270882', got {value!r}"
        )
    return value.strip()
