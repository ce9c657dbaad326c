"""Checkpoints: safetensors weights + resolved config + normaliser, written atomically.

Layout of one checkpoint directory::

    model.safetensors      policy state dict (normaliser included; frozen backbones optional)
    ema.safetensors        EMA of the trainable parameters (when EMA is on)
    normalizer.json        the fitted normaliser in plain numbers (for people)
    config.yaml            the fully resolved training config
    training_state.pt      optimiser, LR scheduler, EMA counters, RNG states, epoch and step
                           (tensors and plain containers only: loads with weights_only=True)
    meta.json              epoch, global step, metrics, parameter counts, versions

A directory is first written under a temporary name and then renamed into place, so a crash
never leaves a half-written checkpoint under a real name.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
NORMALIZER_FILE = "normalizer.json"
FORMAT = "dexgraspvla-controller-v1"
BACKBONE_PREFIXES = ("obs_encoder.dino_head.", "obs_encoder.dino_wrist.")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, or does not fit the model."""


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_dir(final_dir: str, write: Callable[[str], None]) -> str:
    """Call ``write(tmp_dir)`` then move ``tmp_dir`` to ``final_dir`` (replacing it)."""
    final_dir = os.path.abspath(final_dir)
    parent = os.path.dirname(final_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{final_dir}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    os.makedirs(tmp)
    try:
        write(tmp)
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb") as f:
                os.fsync(f.fileno())
        old = None
        if os.path.exists(final_dir):
            old = f"{final_dir}.old-{os.getpid()}-{time.monotonic_ns()}"
            os.rename(final_dir, old)
        os.rename(tmp, final_dir)
        _fsync_dir(parent)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final_dir


def resolve_checkpoint_dir(path: str) -> str:
    """Accept a checkpoint dir, or a dir whose ``latest.old-*`` survived an interrupted swap."""
    path = os.path.abspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, MODEL_FILE)):
        return path
    parent, base = os.path.dirname(path), os.path.basename(path)
    if os.path.isdir(parent):
        olds = sorted(n for n in os.listdir(parent) if n.startswith(base + ".old-"))
        if olds:
            return os.path.join(parent, olds[-1])
    if os.path.isfile(path) and path.endswith(".ckpt"):
        raise CheckpointError(f"'{path}' looks like a reference-format (pickled) checkpoint; convert it first "
                              f"with: python -m controller.convert_checkpoint {path} OUT_DIR --trust-pickle")
    raise CheckpointError(f"no checkpoint at '{path}' (expected a directory containing {MODEL_FILE})")


# ---------------------------------------------------------------------------- RNG state
def capture_rng_state() -> Dict[str, Any]:
    """RNG states of python, numpy, torch (and CUDA) as tensors/plain values."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- save / load
def policy_state_for_saving(policy: torch.nn.Module, save_frozen_backbones: bool = True) -> Dict[str, torch.Tensor]:
    """CPU, contiguous, de-aliased state dict (safetensors refuses shared storage)."""
    out = {}
    for k, v in policy.state_dict().items():
        if not save_frozen_backbones and k.startswith(BACKBONE_PREFIXES):
            continue
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


def save_checkpoint(ckpt_dir: str, policy: torch.nn.Module, cfg: Any = None, ema=None,
                    training_state: Optional[Dict[str, Any]] = None, meta: Optional[Dict[str, Any]] = None,
                    save_frozen_backbones: bool = True) -> str:
    """Write a complete checkpoint directory atomically; returns its path."""
    from omegaconf import OmegaConf

    weights = policy_state_for_saving(policy, save_frozen_backbones)
    ema_weights = ({k: v.detach().cpu().contiguous().clone() for k, v in ema.state_dict()["shadow"].items()}
                   if ema is not None else None)
    normalizer = {}
    if hasattr(policy, "normalizer"):
        normalizer = {k: v.detach().cpu().tolist() for k, v in policy.normalizer.state_dict().items()}
    meta = dict(meta or {})
    meta.update({"format": FORMAT, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "torch": torch.__version__, "frozen_backbones_saved": bool(save_frozen_backbones),
                 "has_ema": ema is not None})

    def write(tmp: str) -> None:
        save_file(weights, os.path.join(tmp, MODEL_FILE), metadata={"format": FORMAT})
        if ema_weights is not None:
            save_file(ema_weights, os.path.join(tmp, EMA_FILE), metadata={"format": FORMAT})
        if cfg is not None:
            text = OmegaConf.to_yaml(cfg, resolve=True) if OmegaConf.is_config(cfg) else OmegaConf.to_yaml(
                OmegaConf.create(cfg))
            with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
                f.write(text)
        with open(os.path.join(tmp, NORMALIZER_FILE), "w") as f:
            json.dump(normalizer, f)
        if training_state is not None:
            torch.save(training_state, os.path.join(tmp, STATE_FILE))
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2, default=str)

    return atomic_write_dir(ckpt_dir, write)


def load_training_state(ckpt_dir: str) -> Dict[str, Any]:
    """The optimiser/scheduler/RNG payload, loaded with ``weights_only=True``."""
    path = os.path.join(resolve_checkpoint_dir(ckpt_dir), STATE_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"'{path}' is missing: this checkpoint holds weights only and cannot resume "
                              f"training (use policy.start_ckpt_path to fine-tune from it)")
    return torch.load(path, map_location="cpu", weights_only=True)


def read_meta(ckpt_dir: str) -> Dict[str, Any]:
    path = os.path.join(resolve_checkpoint_dir(ckpt_dir), META_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


#: Modules that start as exact no-ops (zero-initialised output); a fine-tuning start checkpoint
#: made without them may lack their weights.
ZERO_INIT_PREFIXES = ("obs_encoder.mask_geometry_net.",)


def load_policy_weights(policy: torch.nn.Module, ckpt_dir: str, use_ema: bool = False,
                        allow_missing_backbones: bool = False, allow_new_zero_init: bool = False) -> Dict[str, Any]:
    """Load ``model.safetensors`` (optionally with EMA weights on top) strictly into ``policy``.

    ``allow_new_zero_init`` (fine-tuning starts only) tolerates missing weights of the
    zero-initialised modules in :data:`ZERO_INIT_PREFIXES`, which then keep their no-op init.

    Raises :class:`CheckpointError` listing missing/unexpected keys and shape mismatches.
    """
    ckpt_dir = resolve_checkpoint_dir(ckpt_dir)
    path = os.path.join(ckpt_dir, MODEL_FILE)
    try:
        sd = load_file(path)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"could not read '{path}': {exc}") from exc
    if use_ema and os.path.isfile(os.path.join(ckpt_dir, EMA_FILE)):
        sd.update(load_file(os.path.join(ckpt_dir, EMA_FILE)))
    if hasattr(policy, "normalizer"):  # a fresh policy's normaliser is empty: create its fields first
        nsd = {k[len("normalizer."):]: v for k, v in sd.items() if k.startswith("normalizer.")}
        if not nsd:
            raise CheckpointError(f"checkpoint '{path}' has no normaliser ('normalizer.*' keys)")
        policy.normalizer.load_state_dict(nsd)
    own = policy.state_dict()
    missing = sorted(set(own) - set(sd))
    if allow_missing_backbones:
        missing = [k for k in missing if not k.startswith(BACKBONE_PREFIXES)]
    new_modules = [k for k in missing if allow_new_zero_init and k.startswith(ZERO_INIT_PREFIXES)]
    missing = [k for k in missing if k not in new_modules]
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        def fmt(keys):
            return ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
        parts = []
        if wrong:
            parts.append("shape mismatch: " + fmt([f"{k}: checkpoint {tuple(sd[k].shape)} vs model "
                                                   f"{tuple(own[k].shape)}" for k in wrong]))
        if missing:
            parts.append(f"missing keys: {fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {fmt(unexpected)}")
        raise CheckpointError(f"checkpoint '{path}' does not fit the model ({'; '.join(parts)}). "
                              f"Check that the policy preset/config matches the one it was trained with.")
    result = policy.load_state_dict(sd, strict=not (allow_missing_backbones or new_modules))
    return {"path": path, "missing": list(getattr(result, "missing_keys", [])), "new_zero_init": new_modules}
