"""Modbus holding-register map of a 6-DoF dexterous hand (configuration, not code).

The default is the documented Inspire RH56 map. Each ``*_SET`` / ``*_ACT`` entry is the start
address of a block of 6 int16 registers in the DOF order little, ring, middle, index,
thumb-bend, thumb-rotate. Angles run 0..1000 with 1000 = open.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from inference_utils.devices.base import DeviceConfigError
from inference_utils.devices.validation import check_int

#: Register values of a fully open / fully closed finger.
ANGLE_OPEN = 1000
ANGLE_CLOSED = 0
VALUE_MAX = 1000


@dataclasses.dataclass(frozen=True)
class HandRegisterMap:
    """Start addresses of the register blocks used by :class:`ModbusHand`."""

    angle_set: int = 1486
    force_set: int = 1498
    speed_set: int = 1522
    angle_act: int = 1546
    force_act: int = 1582
    error: int = 1606
    status: int = 1612
    temp: int = 1618
    clear_error: int = 1004
    block_size: int = 6

    #: Names of the 6-register blocks (``clear_error`` is a single register).
    BLOCKS = ("angle_set", "force_set", "speed_set", "angle_act", "force_act", "error", "status", "temp")

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            check_int(getattr(self, field.name), f"register_map.{field.name}", 0, 65535)
        if self.block_size != 6:
            raise DeviceConfigError(f"register_map.block_size: a 6-DoF hand needs 6, got {self.block_size}")
        spans = sorted((getattr(self, name), name) for name in self.BLOCKS)
        for (start_a, name_a), (start_b, name_b) in zip(spans, spans[1:]):
            if start_a + self.block_size > start_b:
                raise DeviceConfigError(
                    f"register_map.{name_b}: block at {start_b} overlaps register_map.{name_a} "
                    f"({start_a}..{start_a + self.block_size - 1})"
                )
        for start, name in spans:
            if start + self.block_size - 1 > 65535:
                raise DeviceConfigError(f"register_map.{name}: block at {start} runs past address 65535")
            if start <= self.clear_error < start + self.block_size:
                raise DeviceConfigError(
                    f"register_map.clear_error: {self.clear_error} lies inside register_map.{name}"
                )

    @classmethod
    def from_config(cls, cfg: "HandRegisterMap | Mapping[str, Any] | None") -> "HandRegisterMap":
        """Build from ``None`` (RH56 default), an instance, or a mapping of field -> address."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, Mapping) and not hasattr(cfg, "items"):
            raise DeviceConfigError(f"register_map: expected a mapping of name -> address, got {cfg!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in dict(cfg.items()).items():
            norm = str(key).lower()
            if norm not in names:
                raise DeviceConfigError(
                    f"register_map.{key}: unknown entry; valid entries are {sorted(names)}"
                )
            values[norm] = value
        return cls(**values)

    def all_blocks(self) -> dict[str, int]:
        """Mapping block name -> start address."""
        return {name: getattr(self, name) for name in self.BLOCKS}


#: The documented Inspire RH56 map (the default).
RH56_REGISTER_MAP = HandRegisterMap()
