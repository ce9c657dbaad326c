"""Convert a reference-format DexGraspVLA checkpoint into this project's safe format.

The reference saves ``torch.save({'cfg': OmegaConf, 'state_dicts': {'model': ..., 'ema_model': ...,
'optimizer': ...}, 'pickles': {...}}, pickle_module=dill)``. Loading that runs the pickle machinery,
which can execute arbitrary code, so it happens **only here, only with --trust-pickle**, and
prints a warning. The output is a checkpoint directory (``model.safetensors`` + ``config.yaml`` +
``normalizer.json``) that the rest of the project loads without unpickling anything::

    python -m controller.convert_checkpoint REF.ckpt OUT_DIR --trust-pickle [--preset paper]
           [--use-ema] [--override key=value ...]

Key mapping: module names are the same as ours (``obs_encoder.*``, ``model.*``, ``normalizer.*``);
the DINOv2 backbones are converted from the official layout to timm's (``mask_token`` dropped,
positional embeddings resampled if the image size differs) and the reference's condition-mask
buffers (``cross_attn.masks``/``probs``) are dropped (we draw those masks on the fly).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Any, Dict, List, Optional

import torch

logger = logging.getLogger(__name__)

DROP_SUFFIXES = (".cross_attn.masks", ".cross_attn.probs")
BACKBONES = ("obs_encoder.dino_head.", "obs_encoder.dino_wrist.")


class ConversionError(RuntimeError):
    """The input is not a reference-format checkpoint, or does not fit the chosen preset."""


def load_reference_payload(path: str, trust_pickle: bool) -> Dict[str, Any]:
    """Read a reference ``.ckpt``; unpickling only with ``trust_pickle``."""
    if not os.path.isfile(path):
        raise ConversionError(f"'{path}' does not exist")
    if not trust_pickle:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ConversionError(
                f"'{path}' cannot be read without unpickling ({type(exc).__name__}). Reference checkpoints "
                f"embed pickled Python objects; only if you trust where this file came from, re-run with "
                f"--trust-pickle.") from exc
    warnings.warn(f"unpickling '{path}' (--trust-pickle): this can execute code embedded in the file",
                  stacklevel=2)
    try:
        import dill as pickle_module  # the reference writes with dill
    except ImportError:
        import pickle as pickle_module
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=pickle_module)


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        try:
            node = node[part] if part in node else None
        except TypeError:
            return None
        if node is None:
            return None
    return node


def overrides_from_reference_cfg(cfg: Any) -> List[str]:
    """Hydra overrides reproducing the reference run's model settings in our config."""
    if cfg is None:
        return []
    out: List[str] = []
    pairs = {
        "policy.obs_encoder.model_config.head.model_type": "policy.obs_encoder.head.model_type",
        "policy.obs_encoder.model_config.wrist.model_type": "policy.obs_encoder.wrist.model_type",
        "policy.n_layer": "policy.n_layer",
        "policy.n_head": "policy.n_head",
        "policy.p_drop_attn": "policy.p_drop_attn",
        "policy.use_attn_mask": "policy.use_attn_mask",
        "policy.num_inference_steps": "policy.num_inference_steps",
        "n_action_steps": "n_action_steps",
    }
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample",
                "set_alpha_to_one", "steps_offset", "prediction_type"):
        pairs[f"policy.noise_scheduler.{key}"] = f"policy.noise_scheduler.{key}"
    for src, dst in pairs.items():
        val = _get(cfg, src)
        if val is not None and not isinstance(val, (dict, list)) and "${" not in str(val):
            out.append(f"{dst}={str(val).lower() if isinstance(val, bool) else val}")
    shape = _get(cfg, "task.image_shape")
    if shape is not None:
        out.append(f"image_size={int(list(shape)[-1])}")
    return out


def map_state_dict(ref_sd: Dict[str, torch.Tensor], policy: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Reference key layout -> ours (backbones via timm's DINOv2 converter)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    out: Dict[str, torch.Tensor] = {}
    for prefix in BACKBONES:
        sub = {k[len(prefix):]: v for k, v in ref_sd.items() if k.startswith(prefix)}
        if not sub:
            continue
        module = policy.get_submodule(prefix.rstrip("."))
        if "mask_token" in sub:
            sub = checkpoint_filter_fn(sub, module)
        out.update({prefix + k: v for k, v in sub.items()})
    for k, v in ref_sd.items():
        if k.startswith(BACKBONES) or k.endswith(DROP_SUFFIXES):
            continue
        out[k] = v
    return out


def convert(ref_path: str, out_dir: str, trust_pickle: bool = False, preset: str = "paper",
            use_ema: bool = False, extra_overrides: Optional[List[str]] = None) -> str:
    """Convert ``ref_path`` into a checkpoint directory ``out_dir``; returns ``out_dir``."""
    from hydra import compose, initialize_config_dir

    from controller.policy.loading import build_policy
    from controller.workspace.checkpoint import CheckpointError, load_policy_weights, save_checkpoint

    payload = load_reference_payload(ref_path, trust_pickle)
    if not isinstance(payload, dict) or "state_dicts" not in payload:
        raise ConversionError(f"'{ref_path}' is not a reference checkpoint: expected a dict with 'state_dicts', "
                              f"got {type(payload).__name__} with keys {list(payload)[:8] if isinstance(payload, dict) else '-'}")
    sds = payload["state_dicts"]
    key = "ema_model" if use_ema else "model"
    if key not in sds:
        raise ConversionError(f"'{ref_path}': state_dicts has no '{key}' (has {sorted(sds)})")
    overrides = [f"policy={preset}"] + overrides_from_reference_cfg(payload.get("cfg")) + list(extra_overrides or [])
    config_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="train_dexgraspvla_controller_workspace", overrides=overrides)
    policy = build_policy(cfg.policy, skip_backbone_weights=True)
    mapped = map_state_dict(sds[key], policy)
    tmp_dir = out_dir.rstrip("/") + ".staging"
    save_checkpoint(tmp_dir, policy, cfg=cfg)  # structure only; weights replaced below
    from safetensors.torch import save_file
    save_file({k: v.contiguous().clone() for k, v in mapped.items()},
              os.path.join(tmp_dir, "model.safetensors"))
    try:
        load_policy_weights(policy, tmp_dir)  # strict: names and shapes must fit
    except CheckpointError as exc:
        import shutil
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise ConversionError(f"converted weights do not fit preset '{preset}' with overrides {overrides}: {exc}") from exc
    import shutil
    save_checkpoint(out_dir, policy, cfg=cfg, meta={"converted_from": os.path.abspath(ref_path),
                                                    "overrides": overrides, "ema": use_ema})
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ref_ckpt", help="reference-format .ckpt file")
    ap.add_argument("out_dir", help="output checkpoint directory")
    ap.add_argument("--trust-pickle", action="store_true",
                    help="allow unpickling the reference file (it can execute code: trusted files only)")
    ap.add_argument("--preset", default="paper", help="policy preset the weights fit (default: paper)")
    ap.add_argument("--use-ema", action="store_true", help="convert the EMA weights instead of the raw ones")
    ap.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    args = ap.parse_args(argv)
    try:
        out = convert(args.ref_ckpt, args.out_dir, args.trust_pickle, args.preset, args.use_ema, args.override)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"converted {args.ref_ckpt} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
