"""Inference configuration: Hydra composition and validation before anything connects or moves.

Config tree: ``inference_utils/config/inference.yaml`` with the groups ``robot`` (sim, emulated,
real), ``planner`` (offline, vllm), ``perception`` (classic, learned) and ``agent`` (dexgraspvla, the
default; dexvla: a DexVLA checkpoint on the prompt, mode ``language``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Sequence
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
CONFIG_NAME = "inference"


class ConfigError(ValueError):
    """An invalid inference configuration value; the message names the field."""


def compose_config(overrides: Sequence[str] = (), config_dir: Optional[Path] = None) -> DictConfig:
    """Compose ``inference.yaml`` with Hydra overrides (``robot=real loop.max_attempts=3 ...``)."""
    from hydra import compose, initialize_config_dir  # noqa: PLC0415
    from hydra.errors import HydraException  # noqa: PLC0415
    from omegaconf.errors import OmegaConfBaseException  # noqa: PLC0415

    for item in overrides:
        if "=" not in item or item.startswith("-"):
            raise ConfigError(f"unrecognised argument {item!r}: expected a flag (see --help) or a Hydra "
                              "override key=value")
    try:
        with initialize_config_dir(config_dir=str(config_dir or CONFIG_DIR), version_base=None):
            return compose(config_name=CONFIG_NAME, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"invalid override: {exc}") from exc


def parse_bbox(value: Any) -> Optional[list[float]]:
    """``"x1,y1,x2,y2"`` (or a list of 4 numbers) -> [x1, y1, x2, y2]; None stays None."""
    if value is None:
        return None
    items = str(value).replace(" ", "").strip("[]").split(",") if isinstance(value, str) else list(value)
    try:
        box = [float(v) for v in items]
    except (TypeError, ValueError):
        raise ConfigError(f"bbox: expected four numbers x1,y1,x2,y2, got {value!r}") from None
    if len(box) != 4:
        raise ConfigError(f"bbox: expected four numbers x1,y1,x2,y2, got {len(box)}")
    if not (box[0] < box[2] and box[1] < box[3]) or min(box) < 0:
        raise ConfigError(f"bbox: need 0 <= x1 < x2 and 0 <= y1 < y2, got {box}")
    return box


def _number(cfg: DictConfig, key: str, lo: float, hi: float, *, integer: bool = False,
            lo_open: bool = False, optional: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and int(value) != value):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key}: expected {kind} in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")
    if not ((value > lo if lo_open else value >= lo) and value <= hi):
        raise ConfigError(f"{key}: {value} is out of range {'(' if lo_open else '['}{lo}, {hi}]")


def _validate_remote(cfg: DictConfig) -> None:
    """``controller.remote``: where the policy server is and how long to wait for it."""
    remote = OmegaConf.select(cfg, "controller.remote")
    if not isinstance(remote, DictConfig):
        raise ConfigError("controller.remote: controller.type=remote needs host, port, token_env, timeout_s")
    host = remote.get("host")
    if not isinstance(host, str) or not host.strip() or any(c in host for c in "/?#@ "):
        raise ConfigError(f"controller.remote.host: expected a host name or IP address, got {host!r}")
    _number(cfg, "controller.remote.port", 1, 65535, integer=True)
    _number(cfg, "controller.remote.timeout_s", 0, 3600, lo_open=True)
    _number(cfg, "controller.remote.connect_timeout_s", 0, 600, lo_open=True)
    _number(cfg, "controller.remote.reconnect_attempts", 0, 100, integer=True)
    _number(cfg, "controller.remote.reconnect_delay_s", 0, 60)
    token_env = remote.get("token_env")
    if not isinstance(token_env, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", token_env):
        raise ConfigError(f"controller.remote.token_env: expected an environment variable name, got {token_env!r} "
                          "(the token itself is read from that variable, never from the config)")


def _validate_dexvla(cfg: DictConfig, agent: str) -> None:
    """``agent=dexvla``: language mode (the prompt is the instruction), a policy or remote controller."""
    if agent != "dexvla":
        raise ConfigError(f"mode: 'language' is the mode of agent=dexvla, not of agent={agent}")
    if cfg.mode != "language":
        raise ConfigError(f"mode: agent=dexvla takes the prompt as its instruction (mode 'language'); "
                          f"{cfg.mode!r} (--manual / boxes) is not supported")
    if cfg.controller.type not in ("policy", "remote"):
        raise ConfigError(f"controller.type: agent=dexvla runs a DexVLA checkpoint (policy) or a policy server "
                          f"serving one (remote), got {cfg.controller.type!r}")
    if cfg.get("gen_attn_map"):
        raise ConfigError("--gen-attn-map: DexVLA has no attention maps")
    _number(cfg, "agent.max_attempts", 1, 1000, integer=True)
    _number(cfg, "agent.verify_height_m", 0, 5, lo_open=True)
    if cfg.non_interactive and not (cfg.prompt or "").strip():
        raise ConfigError("prompt: agent=dexvla with --non-interactive needs --prompt \"...\" (the instruction)")


def validate_config(cfg: DictConfig) -> None:
    """Check every value the loop relies on; raises :class:`ConfigError` naming the field.

    Device parameters are validated by the device constructors, the simulator's by ``SimConfig``
    and perception back-ends by their factories, all before anything connects.
    """
    agent = str(OmegaConf.select(cfg, "agent.name", default="dexgraspvla"))
    if agent == "dexvla" or cfg.mode == "language":
        _validate_dexvla(cfg, agent)
    elif cfg.mode not in ("planner", "manual"):
        raise ConfigError(f"mode: expected 'planner' or 'manual', got {cfg.mode!r}")
    _number(cfg, "loop.control_hz", 0, 1000, lo_open=True)
    _number(cfg, "loop.execute_actions_per_chunk", 1, 64, integer=True)
    _number(cfg, "loop.lift_height_m", 0, 5, lo_open=True)
    _number(cfg, "loop.lift_arm_margin_m", 0, 1)
    _number(cfg, "loop.attempt_time_limit_s", 0, 3600, lo_open=True)
    _number(cfg, "loop.max_failed_verifications", 1, 100, integer=True)
    _number(cfg, "loop.max_attempts", 1, 1000, integer=True)
    _number(cfg, "loop.max_planner_errors", 1, 100, integer=True)
    _number(cfg, "loop.max_chunks_per_attempt", 1, 100000, integer=True, optional=True)
    _number(cfg, "loop.manual_attempts", 1, 1000, integer=True)
    _number(cfg, "loop.min_mask_pixels", 0, 1e7, integer=True)
    avoid = OmegaConf.select(cfg, "loop.avoid_failed_targets", default=True)
    if not isinstance(avoid, bool):
        raise ConfigError(f"loop.avoid_failed_targets: expected true or false, got {avoid!r}")
    recovery = OmegaConf.select(cfg, "loop.recovery")
    if recovery is not None:
        from inference_utils.runtime.recovery import RecoveryConfig  # noqa: PLC0415

        try:
            rc = RecoveryConfig.from_mapping(OmegaConf.to_container(recovery, resolve=True))
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        if rc.enabled and OmegaConf.select(cfg, f"robot.poses.{rc.safe_pose}") is None:
            raise ConfigError(f"loop.recovery.safe_pose: no joint pose robot.poses.{rc.safe_pose}")
    for key in ("camera_head", "camera_wrist", "arm", "hand"):
        section = OmegaConf.select(cfg, f"robot.{key}")
        if not isinstance(section, DictConfig) or not section.get("type"):
            raise ConfigError(f"robot.{key}.type: every device needs a type (e.g. sim, realsense, realman, modbus)")
    if cfg.controller.type not in ("policy", "remote", "expert"):
        raise ConfigError(f"controller.type: expected 'policy', 'remote' or 'expert', got {cfg.controller.type!r}")
    if cfg.controller.type in ("policy", "remote"):
        _number(cfg, "controller.temporal_ensemble", 0, 1e3, optional=True)
        _number(cfg, "controller.num_samples", 1, 256, integer=True, optional=True)
    if cfg.controller.type == "remote":
        _validate_remote(cfg)
    elif cfg.controller.type == "policy":
        if str(cfg.controller.get("precision", "auto")) not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"controller.precision: expected auto, fp32 or bf16, got {cfg.controller.precision!r}")
        ckpt = cfg.controller.checkpoint
        if not ckpt:
            raise ConfigError("controller.checkpoint: required for controller.type=policy "
                              "(or use controller.type=expert with robot=sim)")
        if not Path(str(ckpt)).is_dir():
            raise ConfigError(f"controller.checkpoint: {ckpt!r} is not a checkpoint directory")
    elif cfg.robot.arm.type != "sim":
        raise ConfigError("controller.type=expert: the scripted expert needs the simulated arm (robot=sim)")
    if cfg.mode == "language":
        pass  # agent=dexvla: checked by _validate_dexvla (no planner, no box)
    elif cfg.mode == "planner":
        if str(OmegaConf.select(cfg, "robot.camera_head.type")) == "synthetic":
            # The synthetic camera draws a colour gradient, not a scene: the planner would find no
            # object and the run would "complete" 0/0. Refuse before anything connects.
            raise ConfigError(f"robot={cfg.robot.get('name', '?')}: planner mode needs a camera that sees "
                              "objects, but robot.camera_head.type=synthetic renders a colour gradient; use "
                              "--manual --bbox x1,y1,x2,y2 on this robot, or robot=sim for the planner")
        backend = str(cfg.planner.get("backend", "http"))
        if backend == "http":
            url = urlparse(str(cfg.planner.get("base_url") or ""))
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ConfigError(f"planner.base_url: expected an http(s) URL, got {cfg.planner.get('base_url')!r}")
        elif backend == "transformers":
            if not cfg.planner.get("model_path"):
                raise ConfigError("planner.model_path: the transformers planner needs the local model folder "
                                  "(e.g. planner.model_path=/models/Qwen2.5-VL-7B-Instruct)")
        else:
            raise ConfigError(f"planner.backend: expected 'http' or 'transformers', got {backend!r}")
        _number(cfg, "planner.timeout_s", 0, 3600, lo_open=True)
        _number(cfg, "planner.max_retries", 0, 20, integer=True)
        if cfg.non_interactive and not (cfg.prompt or "").strip():
            raise ConfigError("prompt: planner mode with --non-interactive needs --prompt \"...\"")
    else:
        box = parse_bbox(cfg.bbox)
        if box is None and cfg.non_interactive:
            raise ConfigError("bbox: manual mode with --non-interactive needs --bbox x1,y1,x2,y2")
    for key in ("home", "placement"):
        if OmegaConf.select(cfg, f"robot.poses.{key}") is None:
            raise ConfigError(f"robot.poses.{key}: a joint pose (7 angles in rad) is required")
