"""Build a policy from a checkpoint directory safely.

A checkpoint's ``config.yaml`` is data from a file, so it is never handed to Hydra's
``instantiate`` (which imports and calls any dotted path). The ``policy:`` section is built by
:func:`controller.common.registry.instantiate`: every ``_target_`` must be an exact, registered
*policy* class; ``_args_``/``_partial_``/``_call_``/``_recursive_``/``_convert_`` and resolver
interpolations are refused. Weights load from safetensors; nothing is unpickled.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from controller.common.registry import UnsafeConfigError, check_config, instantiate

from controller.workspace.checkpoint import (BACKBONE_PREFIXES, CONFIG_FILE, MODEL_FILE, CheckpointError,
                                             check_safetensors_file, load_policy_weights, resolve_checkpoint_dir)
from controller.workspace.integrity import verify_hashes

logger = logging.getLogger(__name__)

POLICY_KINDS = ("policy",)


def check_targets(node: Any, where: str = "policy") -> None:
    """Raise :class:`CheckpointError` if ``node`` (a checkpoint's policy config) would build anything
    but registered policy classes, or uses a key or interpolation treated as code."""
    try:
        check_config(node, POLICY_KINDS, where=where, allow_resolvers=False)
    except UnsafeConfigError as exc:
        raise CheckpointError(f"refusing to load this checkpoint's config: {exc}") from exc


def build_policy(policy_cfg: Any, skip_backbone_weights: bool = True, where: str = "policy") -> torch.nn.Module:
    """Build a policy from an untrusted config (a checkpoint's); by default frozen-backbone
    weight files are not read (the checkpoint holds those weights)."""
    check_targets(policy_cfg, where)
    cfg = OmegaConf.create(OmegaConf.to_container(policy_cfg, resolve=True))
    if skip_backbone_weights:
        for part in ("head", "wrist"):
            node = cfg.get("obs_encoder", {}).get(part)
            if node is not None and "local_weights_path" in node:
                node.local_weights_path = None
    if cfg.get("init_from") is not None:  # start-up weights of a training run (DexVLA stage chaining):
        cfg.init_from = None               # the checkpoint being loaded holds every weight itself
    try:
        return instantiate(cfg, POLICY_KINDS, where=where)
    except UnsafeConfigError as exc:
        raise CheckpointError(f"refusing to load this checkpoint's config: {exc}") from exc


def load_config(ckpt_dir: str) -> DictConfig:
    path = os.path.join(resolve_checkpoint_dir(ckpt_dir), CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"'{path}' is missing: a checkpoint needs its config to rebuild the policy")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - yaml/omegaconf raise many kinds
        raise CheckpointError(f"'{path}' is not a readable config: {exc}") from exc
    if not isinstance(cfg, DictConfig) or "policy" not in cfg:
        raise CheckpointError(f"'{path}' has no 'policy' section")
    return cfg


def load_policy(ckpt_dir: str, device: str | torch.device = "cpu", use_ema: bool = True
                ) -> Tuple[torch.nn.Module, DictConfig]:
    """Rebuild the policy of a checkpoint and load its weights (EMA ones when present and asked).

    Exported checkpoints are first checked against the SHA-256s in their ``meta.json``; the
    config's ``policy:`` section may build registered policy classes only (see module docstring).

    Returns ``(policy in eval mode on device, config)``.
    """
    ckpt_dir = resolve_checkpoint_dir(ckpt_dir)
    verify_hashes(ckpt_dir)  # exported checkpoints: weights, config and normaliser as exported
    cfg = load_config(ckpt_dir)
    # header checked against the file (names the file and tensor when damaged); no tensor is read here
    keys = check_safetensors_file(os.path.join(ckpt_dir, MODEL_FILE))
    has_backbones = any(k.startswith(BACKBONE_PREFIXES) for k in keys)
    policy = build_policy(cfg.policy, skip_backbone_weights=has_backbones, where=f"{CONFIG_FILE}: policy")
    load_policy_weights(policy, ckpt_dir, use_ema=use_ema, allow_missing_backbones=not has_backbones)
    policy.to(device).eval()
    logger.info("loaded policy from %s (%d trainable parameters)", ckpt_dir,
                sum(p.numel() for p in policy.parameters() if p.requires_grad))
    return policy, cfg
