"""Convert a released ScaleDP (DexVLA stage-1) ``.ckpt`` into a safetensors expert file.

DexVLA publishes its stage-1 action experts (ScaleDP-H, ScaleDP-L) as pickles whose weights sit at
``ckpt['nets']['nets']`` (a state dict of the whole stage-1 policy). DexVLA's own stage-2 loader
(``qwen2_vla/model_load_utils.py``) strips a leading ``policy.``, drops every key without
``noise_pred`` (the stage-1 observation encoders) and ``cond_obs_emb``, strips ``noise_pred_net.``
and loads the rest non-strictly into its ScaleDP head. Here::

    python -m controller.convert_checkpoint REF.ckpt OUT.safetensors --trust-pickle --format scaledp
           [--num-heads N] [--drop-cond-obs-emb] [--nets-key nets]

reads the file with :func:`controller.convert_checkpoint.load_reference_payload` (the project's
only unpickler, behind ``--trust-pickle``; this module unpickles nothing itself) and writes

* ``OUT.safetensors``: the ScaleDP tensors under this project's names (those of
  :class:`controller.model.scaledp.ScaleDP`, identical to the reference's below ``noise_pred_net.``),
  metadata ``format = scaledp-expert-v1`` and the inferred ``config`` (JSON). A DexVLA policy
  starts from it with ``policy.init_from=OUT.safetensors`` (keys go to ``expert.model.*``);
* ``OUT.conversion_report.json`` beside it: every source key as ``kept`` (same name), ``renamed``
  (prefix stripped) or ``dropped`` (with the reason), the inferred sizes, and the payload's other
  entries (unused).

Rules: keys outside ``noise_pred_net.`` are dropped (DexVLA's own rule: not part of the expert);
inside it, every ScaleDP tensor is kept, ``norm_after_pool.*`` (TinyVLA's pooling norm, unused by
DexVLA) and empty tensors are dropped, and any other key is an error naming it; a ScaleDP tensor
the file lacks is an error too (except ``cond_obs_emb`` with ``--drop-cond-obs-emb``, which copies
DexVLA's loader). The sizes are inferred from the shapes and checked by loading the tensors
strictly into a :class:`ScaleDP` of those sizes.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from controller.model.scaledp.scaledp import PRESETS, ScaleDP, ScaleDPConfig
from controller.reference_format import ConversionError

__all__ = ["convert_scaledp", "infer_config", "map_scaledp_keys", "report_path_for", "FORMAT"]

FORMAT = "scaledp-expert-v1"  # = controller.policy.dexvla_init.SCALEDP_FORMAT
EXPERT_PREFIX = "noise_pred_net."
POLICY_PREFIX = "policy."
COND_OBS_EMB = ("cond_obs_emb.weight", "cond_obs_emb.bias")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


def report_path_for(out_path: str) -> str:
    """``OUT.safetensors`` -> ``OUT.conversion_report.json`` (beside it)."""
    stem = out_path[:-len(".safetensors")] if out_path.endswith(".safetensors") else out_path
    return stem + ".conversion_report.json"


def _scaledp_key_pattern(depth: int) -> List[str]:
    """Every tensor name of a ScaleDP with ``depth`` blocks (sizes do not change the names)."""
    cfg = ScaleDPConfig(depth=depth, width=8, num_heads=1, cond_dim=4, state_dim=1, action_dim=1, horizon=1,
                        combine_hidden=4, frequency_dim=4)
    with torch.device("meta"):
        return list(ScaleDP(cfg).state_dict())


def map_scaledp_keys(nets: Mapping[str, Any], drop_cond_obs_emb: bool = False
                     ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Source state dict -> (ScaleDP tensors by our names, mapping report).

    Raises :class:`ConversionError` naming an unknown non-empty key inside ``noise_pred_net.``, a
    non-tensor value, or a ScaleDP tensor the file lacks."""
    kept: List[str] = []
    renamed: List[Dict[str, str]] = []
    dropped: Dict[str, str] = {}
    out: Dict[str, torch.Tensor] = {}
    candidates: Dict[str, Tuple[str, torch.Tensor]] = {}
    for key, value in nets.items():
        if not torch.is_tensor(value):
            raise ConversionError(f"['nets']['nets']['{key}'] is a {type(value).__name__}, not a tensor")
        name = key[len(POLICY_PREFIX):] if key.startswith(POLICY_PREFIX) else key
        if not name.startswith(EXPERT_PREFIX):
            dropped[key] = "not part of the action expert (no 'noise_pred_net.'; DexVLA's loader drops it too)"
            continue
        candidates[name[len(EXPERT_PREFIX):]] = (key, value)
    depths = [int(m.group(1)) for k in candidates if (m := _BLOCK_RE.match(k))]
    known = set(_scaledp_key_pattern(max(depths) + 1 if depths else 0))
    for ours, (key, value) in candidates.items():
        if ours not in known:
            if ours.startswith("norm_after_pool."):
                dropped[key] = "TinyVLA's pooling LayerNorm (is_tinyvla), not used by DexVLA"
            elif value.numel() == 0:
                dropped[key] = "empty tensor"
            else:
                raise ConversionError(f"unknown key '{key}' {tuple(value.shape)} in ['nets']['nets']: not a ScaleDP "
                                      f"tensor (expected {EXPERT_PREFIX}<ScaleDP name>)")
            continue
        if drop_cond_obs_emb and ours in COND_OBS_EMB:
            dropped[key] = "--drop-cond-obs-emb (DexVLA's stage-2 loader re-learns cond_obs_emb)"
            continue
        out[ours] = value.detach().to("cpu").contiguous().clone()
        if ours == key:
            kept.append(key)
        else:
            renamed.append({"from": key, "to": ours})
    missing = sorted(known - set(out) - (set(COND_OBS_EMB) if drop_cond_obs_emb else set()))
    if missing:
        raise ConversionError(f"ScaleDP tensors missing from ['nets']['nets']: {', '.join(missing[:10])}"
                              + (f" ... ({len(missing)} in all)" if len(missing) > 10 else ""))
    report = {"kept": sorted(kept), "renamed": sorted(renamed, key=lambda r: r["from"]),
              "dropped": dict(sorted(dropped.items())),
              "counts": {"source": len(nets), "kept": len(kept), "renamed": len(renamed), "dropped": len(dropped)}}
    return out, report


def infer_config(tensors: Mapping[str, torch.Tensor], num_heads: Optional[int] = None) -> ScaleDPConfig:
    """ScaleDP sizes from the tensor shapes. ``num_heads`` does not show in the shapes: given, or
    DexVLA's/DiT's for the preset widths (:data:`PRESETS`)."""
    width, action_dim = tensors["x_embedder.weight"].shape                     # (W, A)
    combine_hidden, cond_plus_state = tensors["combine.0.weight"].shape        # (C, D + S)
    cond_dim = tensors["combine.4.weight"].shape[0]                            # (D, C)
    depth = len({m.group(1) for k in tensors if (m := _BLOCK_RE.match(k))})
    if num_heads is None:
        by_width = {w: h for _d, w, h in PRESETS.values()}
        if width not in by_width:
            raise ConversionError(f"width {width} is not a preset width ({sorted(by_width)}): pass --num-heads")
        num_heads = by_width[width]
    mlp_ratio = tensors["blocks.0.mlp.fc1.weight"].shape[0] / width if depth else 4.0
    return ScaleDPConfig(action_dim=int(action_dim), horizon=int(tensors["pos_embed"].shape[1]),
                         cond_dim=int(cond_dim), state_dim=int(cond_plus_state - cond_dim), depth=depth,
                         width=int(width), num_heads=int(num_heads), mlp_ratio=float(mlp_ratio),
                         combine_hidden=int(combine_hidden),
                         frequency_dim=int(tensors["t_embedder.mlp.0.weight"].shape[1]))


def convert_scaledp(ref_path: str, out_path: str, trust_pickle: bool = False, num_heads: Optional[int] = None,
                    drop_cond_obs_emb: bool = False, nets_key: str = "nets") -> Dict[str, Any]:
    """Convert ``ref_path`` (released ScaleDP ``.ckpt``) into ``out_path`` (.safetensors); returns the
    report, also written to :func:`report_path_for` ``(out_path)``."""
    from safetensors.torch import save_file

    from controller.convert_checkpoint import load_reference_payload  # the one trusted unpickler

    if not out_path.endswith(".safetensors"):
        raise ConversionError(f"--format scaledp writes a .safetensors file; got '{out_path}'")
    if os.path.exists(out_path):
        raise ConversionError(f"'{out_path}' exists; refusing to overwrite it")
    payload = load_reference_payload(ref_path, trust_pickle)
    outer = payload.get("nets") if isinstance(payload, dict) else None
    if not isinstance(outer, dict) or not isinstance(outer.get(nets_key), dict):
        got = sorted(map(str, payload))[:8] if isinstance(payload, dict) else type(payload).__name__
        inner = sorted(map(str, outer))[:8] if isinstance(outer, dict) else None
        raise ConversionError(f"'{ref_path}' is not a released ScaleDP checkpoint: expected a dict with "
                              f"['nets']['{nets_key}'] (a state dict); top-level keys {got}"
                              + (f", ['nets'] keys {inner}" if inner is not None else ""))
    tensors, mapping = map_scaledp_keys(outer[nets_key], drop_cond_obs_emb)
    cfg = infer_config(tensors, num_heads)
    check = ScaleDP(cfg)
    result = check.load_state_dict(tensors, strict=not drop_cond_obs_emb)
    if drop_cond_obs_emb and (result.unexpected_keys or set(result.missing_keys) - set(COND_OBS_EMB)):
        raise ConversionError(f"the tensors do not load into ScaleDP {cfg}: {result}")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    save_file(tensors, out_path, metadata={"format": FORMAT, "config": json.dumps(asdict(cfg)),
                                           "source": os.path.basename(ref_path)})
    report = {"source": os.path.abspath(ref_path), "source_bytes": os.path.getsize(ref_path),
              "output": os.path.abspath(out_path), "report_path": os.path.abspath(report_path_for(out_path)),
              "weights": f"['nets']['{nets_key}']", "config": asdict(cfg),
              "parameters": sum(t.numel() for t in tensors.values()),
              "unused_entries": {"top_level": sorted(str(k) for k in payload if k != "nets"),
                                 "nets": sorted(str(k) for k in outer if k != nets_key)},
              "cond_obs_emb": "dropped" if drop_cond_obs_emb else "kept",
              "mapping": mapping,
              "use": f"policy.init_from={os.path.abspath(out_path)} (expert sizes must match 'config')"}
    with open(report["report_path"], "w") as f:
        json.dump(report, f, indent=2)
    return report


def format_scaledp_summary(report: Mapping[str, Any]) -> str:
    """A few lines for the console."""
    c, cfg = report["mapping"]["counts"], report["config"]
    return (f"converted {report['source']} {report['weights']}: {c['source']} tensors -> {c['kept']} kept, "
            f"{c['renamed']} renamed, {c['dropped']} dropped\n"
            f"ScaleDP depth {cfg['depth']} width {cfg['width']} heads {cfg['num_heads']} "
            f"(cond {cfg['cond_dim']}, state {cfg['state_dim']}, action {cfg['action_dim']}, horizon "
            f"{cfg['horizon']}): {report['parameters']:,} parameters\n"
            f"wrote {report['output']}\nreport {report['report_path']}\nuse: {report['use']}")
