"""Build devices from configuration: ``make_camera(cfg)``, ``make_arm(cfg)``, ``make_hand(cfg)``.

``cfg`` is a mapping (dict, OmegaConf ``DictConfig``), a dataclass or a namespace with a
``type`` entry naming the implementation; every other entry is passed to its constructor, which
validates it (errors name the field) before anything connects or moves::

    make_hand({"type": "modbus", "host": "192.168.11.210", "port": 6000, "speed": 800})

Built-in types: camera ``realsense`` / ``synthetic`` / ``frames``; arm ``realman``; hand
``modbus``. Other modules add theirs with :func:`register_device` (e.g. the simulator's
``sim`` devices).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

from inference_utils.devices.base import Arm, Camera, DeviceConfigError, Hand

KINDS = ("camera", "arm", "hand")
_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}


def register_device(kind: str, type_name: str, cls: Callable[..., Any], *, replace: bool = False) -> None:
    """Make ``cls`` constructible as ``{"type": type_name, ...}`` for ``kind`` (camera/arm/hand)."""
    if kind not in _REGISTRY:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(type_name, str) or not type_name:
        raise ValueError(f"type_name must be a non-empty string, got {type_name!r}")
    if type_name in _REGISTRY[kind] and not replace and _REGISTRY[kind][type_name] is not cls:
        raise ValueError(f"{kind} type {type_name!r} is already registered (pass replace=True)")
    _REGISTRY[kind][type_name] = cls


def registered_types(kind: str) -> list[str]:
    """Sorted type names registered for ``kind``."""
    return sorted(_REGISTRY[kind])


def _to_dict(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        raise DeviceConfigError("device config is missing (None)")
    try:  # OmegaConf containers: resolve interpolations into plain python
        from omegaconf import DictConfig, OmegaConf  # noqa: PLC0415

        if isinstance(cfg, DictConfig):
            return dict(OmegaConf.to_container(cfg, resolve=True))
    except ImportError:
        pass
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, Mapping) or hasattr(cfg, "items"):
        return dict(cfg.items())
    if hasattr(cfg, "__dict__"):
        return dict(vars(cfg))
    raise DeviceConfigError(f"device config must be a mapping with a 'type' entry, got {cfg!r}")


def make_device(kind: str, cfg: Any) -> Any:
    """Construct (not connect) the ``kind`` device described by ``cfg``."""
    if kind not in _REGISTRY:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    params = _to_dict(cfg)
    type_name = params.pop("type", None)
    valid = registered_types(kind)
    if type_name is None:
        raise DeviceConfigError(f"{kind}.type: missing; valid types are {valid}")
    if type_name not in _REGISTRY[kind]:
        raise DeviceConfigError(f"{kind}.type: unknown {kind} type {type_name!r}; valid types are {valid}")
    cls = _REGISTRY[kind][type_name]
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    if signature is not None and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    ):
        accepted = [n for n, p in signature.parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise DeviceConfigError(
                f"{kind}.{unknown[0]}: not a parameter of {type_name!r} ({getattr(cls, '__name__', cls)}); "
                f"accepted: {accepted}"
            )
    try:
        return cls(**params)
    except DeviceConfigError as exc:
        raise DeviceConfigError(f"{kind} ({type_name}): {exc}") from exc


def make_camera(cfg: Any) -> Camera:
    """Build a :class:`Camera` from ``cfg`` (see module doc)."""
    return make_device("camera", cfg)


def make_arm(cfg: Any) -> Arm:
    """Build an :class:`Arm` from ``cfg`` (see module doc)."""
    return make_device("arm", cfg)


def make_hand(cfg: Any) -> Hand:
    """Build a :class:`Hand` from ``cfg`` (see module doc)."""
    return make_device("hand", cfg)


def _register_builtins() -> None:
    from inference_utils.devices.frame_cameras import FrameSequenceCamera, SyntheticCamera  # noqa: PLC0415
    from inference_utils.devices.modbus_hand import ModbusHand  # noqa: PLC0415
    from inference_utils.devices.realman_arm import RealManArm  # noqa: PLC0415
    from inference_utils.devices.realsense_camera import RealSenseCamera  # noqa: PLC0415

    register_device("camera", "realsense", RealSenseCamera)
    register_device("camera", "synthetic", SyntheticCamera)
    register_device("camera", "frames", FrameSequenceCamera)
    register_device("arm", "realman", RealManArm)
    register_device("hand", "modbus", ModbusHand)


_register_builtins()
