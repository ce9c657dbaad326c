"""Build a policy from a checkpoint directory safely.

The checkpoint's ``config.yaml`` is instantiated with Hydra, but only after checking that every
``_target_`` in the policy config lies in an allow-listed namespace (our ``controller`` package
and ``diffusers`` schedulers), so a tampered config cannot run arbitrary callables. Weights load
from safetensors; nothing is unpickled.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Tuple

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from controller.workspace.checkpoint import (BACKBONE_PREFIXES, CONFIG_FILE, MODEL_FILE, CheckpointError,
                                             load_policy_weights, resolve_checkpoint_dir)

logger = logging.getLogger(__name__)

SAFE_TARGET_PREFIXES = ("controller.", "diffusers.")


def check_targets(node: Any, where: str = "policy") -> None:
    """Raise if any ``_target_`` below ``node`` is outside the allow-listed namespaces."""
    if isinstance(node, (DictConfig, dict)):
        for k, v in node.items():
            if k == "_target_" and not str(v).startswith(SAFE_TARGET_PREFIXES):
                raise CheckpointError(f"{where}._target_ = '{v}' is not allowed when loading a checkpoint "
                                      f"(allowed prefixes: {SAFE_TARGET_PREFIXES})")
            check_targets(v, f"{where}.{k}")
    elif isinstance(node, (ListConfig, list)):
        for i, v in enumerate(node):
            check_targets(v, f"{where}[{i}]")


def build_policy(policy_cfg: Any, skip_backbone_weights: bool = True) -> torch.nn.Module:
    """Instantiate a policy config; by default frozen-backbone weight files are not read
    (the checkpoint holds those weights)."""
    import hydra

    cfg = OmegaConf.create(OmegaConf.to_container(policy_cfg, resolve=True))
    check_targets(cfg)
    if skip_backbone_weights:
        for part in ("head", "wrist"):
            node = cfg.get("obs_encoder", {}).get(part)
            if node is not None and "local_weights_path" in node:
                node.local_weights_path = None
    return hydra.utils.instantiate(cfg, _convert_="partial")


def load_config(ckpt_dir: str) -> DictConfig:
    path = os.path.join(resolve_checkpoint_dir(ckpt_dir), CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"'{path}' is missing: a checkpoint needs its config to rebuild the policy")
    cfg = OmegaConf.load(path)
    if "policy" not in cfg:
        raise CheckpointError(f"'{path}' has no 'policy' section")
    return cfg


def load_policy(ckpt_dir: str, device: str | torch.device = "cpu", use_ema: bool = True
                ) -> Tuple[torch.nn.Module, DictConfig]:
    """Rebuild the policy of a checkpoint and load its weights (EMA ones when present and asked).

    Returns ``(policy in eval mode on device, config)``.
    """
    from safetensors import safe_open

    ckpt_dir = resolve_checkpoint_dir(ckpt_dir)
    cfg = load_config(ckpt_dir)
    with safe_open(os.path.join(ckpt_dir, MODEL_FILE), framework="pt") as f:
        has_backbones = any(k.startswith(BACKBONE_PREFIXES) for k in f.keys())
    policy = build_policy(cfg.policy, skip_backbone_weights=has_backbones)
    load_policy_weights(policy, ckpt_dir, use_ema=use_ema, allow_missing_backbones=not has_backbones)
    policy.to(device).eval()
    logger.info("loaded policy from %s (%d trainable parameters)", ckpt_dir,
                sum(p.numel() for p in policy.parameters() if p.requires_grad))
    return policy, cfg
