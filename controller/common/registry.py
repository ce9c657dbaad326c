"""The exact list of classes a config may build, and the one function that builds them.

Configs name the class to build with ``_target_`` (Hydra's convention). Hydra's own
``instantiate`` imports and calls *any* dotted path, so a tampered ``config.yaml`` inside a
checkpoint could run ``controller.export_checkpoint.shutil.copyfile`` or ``numpy.load`` with
``allow_pickle``: a prefix test cannot stop that, because every module attribute is reachable
through its package. Here a ``_target_`` must be one of the **exact names** registered below,
must resolve to a **class** whose own module and qualified name are the registered ones (so a
module that re-exports something else under that name is refused), and must belong to a *kind*
the caller allows (a checkpoint's ``policy:`` section may build policy parts, never a dataset).

Keys Hydra or other tools treat as code (``_args_``, ``_partial_``, ``_call_``, ``_recursive_``,
``_convert_`` and any other ``_name_`` key) are refused, as are resolver interpolations
(``${oc.env:...}``, ``${eval:...}``) in untrusted configs.

Adding a class of your own (e.g. a new policy family) is one :func:`register_target` call in
code, never something a file can do::

    from controller.common.registry import register_target
    register_target("my_pkg.policy.MyPolicy", kind="policy")

A policy config is then built with :func:`instantiate`.
"""
from __future__ import annotations

import importlib
import inspect
import re
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

#: ``_target_`` name -> kind. Kinds: ``policy`` (policies and what they are made of),
#: ``dataset``, ``env_runner``, ``workspace``.
_REGISTRY: Dict[str, str] = {
    # policy families and their parts
    "controller.policy.dexgraspvla_controller.DexGraspVLAController": "policy",
    "controller.model.vision.obs_encoder.ObsEncoder": "policy",
    "controller.policy.dexvla_policy.DexVLAPolicy": "policy",
    # diffusers noise schedulers (the public spelling and the defining module's)
    "diffusers.DDIMScheduler": "policy",
    "diffusers.DDPMScheduler": "policy",
    "diffusers.schedulers.scheduling_ddim.DDIMScheduler": "policy",
    "diffusers.schedulers.scheduling_ddpm.DDPMScheduler": "policy",
    # data and evaluation
    "controller.dataset.grasp_dataset.GraspDataset": "dataset",
    "controller.env_runner.sim_grasp_runner.SimGraspRunner": "env_runner",
    "controller.workspace.train_workspace.TrainDexGraspVLAControllerWorkspace": "workspace",
}

KINDS = ("policy", "dataset", "env_runner", "workspace")
#: Hydra's special keys, and ``_call_`` which some tools treat as a call marker.
CODE_KEYS = ("_args_", "_partial_", "_call_", "_recursive_", "_convert_")
_SPECIAL_KEY = re.compile(r"^_.+_$")
_RESOLVER = re.compile(r"\$\{\s*[^}]*?:")   # ${name:...} is a resolver call; ${a.b} is a plain reference


class UnsafeConfigError(ValueError):
    """A config asked to build something outside the registry, or used a key treated as code."""


def register_target(name: str, kind: str) -> None:
    """Allow ``name`` (the exact ``_target_`` string, ``module.Class``) for configs of ``kind``.

    Called from code only. The class must exist and be a class when a config uses it.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got '{kind}'")
    if not isinstance(name, str) or "." not in name:
        raise ValueError(f"a target name is 'package.module.Class', got {name!r}")
    _REGISTRY[name] = kind


def registered_targets(kinds: Optional[Iterable[str]] = None) -> Dict[str, str]:
    """A copy of the registry (name -> kind), optionally only the given kinds."""
    return {n: k for n, k in _REGISTRY.items() if kinds is None or k in set(kinds)}


def resolve_target(name: Any, kinds: Iterable[str] = KINDS, where: str = "_target_") -> type:
    """The class a registered ``_target_`` names; raise :class:`UnsafeConfigError` otherwise."""
    kinds = tuple(kinds)
    if not isinstance(name, str) or name not in _REGISTRY:
        allowed = ", ".join(sorted(registered_targets(kinds)))
        raise UnsafeConfigError(f"{where} = {name!r} is not a registered class (allowed here: {allowed}); "
                                f"register your own classes in code with "
                                f"controller.common.registry.register_target")
    kind = _REGISTRY[name]
    if kind not in kinds:
        raise UnsafeConfigError(f"{where} = '{name}' is a {kind} class, not allowed here (allowed kinds: "
                                f"{', '.join(kinds)})")
    module_name, _, attr = name.rpartition(".")
    obj = getattr(importlib.import_module(module_name), attr, None)
    if not inspect.isclass(obj):
        raise UnsafeConfigError(f"{where} = '{name}' does not name a class (got {type(obj).__name__})")
    # The class must be what the registry means: defined where registered, or the public
    # re-export of a class whose defining module is itself registered (diffusers.DDIMScheduler).
    defined = f"{obj.__module__}.{obj.__qualname__}"
    top = name.split(".")[0]
    if defined != name and not (defined in _REGISTRY and defined.split(".")[0] == top):
        raise UnsafeConfigError(f"{where} = '{name}' resolves to '{defined}', which is not the registered class")
    return obj


def check_config(node: Any, kinds: Iterable[str] = KINDS, where: str = "config",
                 allow_resolvers: bool = False) -> None:
    """Walk a plain or OmegaConf config and raise on anything :func:`instantiate` would refuse.

    Checks every ``_target_`` against the registry (and ``kinds``), refuses code keys and, unless
    ``allow_resolvers``, resolver interpolations. Does not import or build anything beyond
    resolving registered class names.
    """
    kinds = tuple(kinds)
    node = _raw(node)
    if isinstance(node, Mapping):
        for key, value in node.items():
            key_s = str(key)
            if key_s == "_target_":
                resolve_target(value, kinds, where=f"{where}._target_")
            elif _SPECIAL_KEY.match(key_s):
                raise UnsafeConfigError(f"{where}.{key_s}: key '{key_s}' is treated as code by config tools "
                                        f"and is not accepted (refused keys: {', '.join(CODE_KEYS)} and any "
                                        f"other _name_ key)")
            check_config(value, kinds, f"{where}.{key_s}", allow_resolvers)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_config(value, kinds, f"{where}[{i}]", allow_resolvers)
    elif isinstance(node, str) and not allow_resolvers and _RESOLVER.search(node):
        raise UnsafeConfigError(f"{where} = {node!r}: resolver interpolations are not accepted here "
                                f"(only plain ${{a.b}} references)")


def instantiate(cfg: Any, kinds: Iterable[str] = KINDS, where: str = "config", trusted: bool = False,
                **overrides: Any) -> Any:
    """Build the object a config describes, children first (the order Hydra uses).

    Args:
        cfg: a DictConfig or mapping with a registered ``_target_``; nested mappings with a
            ``_target_`` are built first and passed in; other nested values arrive as plain
            python dicts/lists.
        kinds: the kinds of class this config may build (e.g. ``("policy",)`` for a checkpoint's
            policy section).
        where: the config path, for error messages.
        trusted: ``True`` for configs the user composed (Hydra resolves their interpolations
            anyway); ``False`` refuses resolver interpolations, as for a checkpoint's file.
        overrides: keyword arguments replacing those of the top-level node.
    """
    kinds = tuple(kinds)
    raw = _raw(cfg, resolve=False)
    check_config(raw, kinds, where, allow_resolvers=trusted)
    plain = _raw(cfg, resolve=True)
    if not isinstance(plain, Mapping) or "_target_" not in plain:
        raise UnsafeConfigError(f"{where} has no _target_: nothing to build")
    node = dict(plain)
    node.update(overrides)
    return _build(node, kinds, where)


def _build(node: Any, kinds: Tuple[str, ...], where: str) -> Any:
    if isinstance(node, Mapping):
        built = {k: _build(v, kinds, f"{where}.{k}") for k, v in node.items() if k != "_target_"}
        if "_target_" not in node:
            return built
        cls = resolve_target(node["_target_"], kinds, where=f"{where}._target_")
        try:
            return cls(**built)
        except Exception as exc:  # keep the type (callers catch ValueError etc.); say which node failed
            exc.add_note(f"while building {where} ({node['_target_']})")
            raise
    if isinstance(node, (list, tuple)):
        return [_build(v, kinds, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


def _raw(cfg: Any, resolve: bool = False) -> Any:
    """OmegaConf containers -> plain python (interpolations resolved only when asked)."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a requirement
        return cfg
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=resolve)
    if isinstance(cfg, Mapping):
        return {k: _raw(v, resolve) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [_raw(v, resolve) for v in cfg]
    return cfg
