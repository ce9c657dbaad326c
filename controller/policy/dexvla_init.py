"""Stage chaining for DexVLA: start a policy from another stage's weights (``policy.init_from``).

DexVLA trains in three stages (docs/dexvla.md): stage 1 the action expert alone, stage 2 VLM +
projector + expert starting from a stage-1 expert, stage 3 the whole stage-2 network continued on
one task. :func:`load_init_weights` copies the weights of a source into a freshly built
:class:`~controller.policy.dexvla_policy.DexVLAPolicy`, in one of two modes:

* ``full`` -- every tensor of the policy comes from the source (stage 2 -> stage 3, or continuing a
  stage). Strict: a key the model has and the source lacks, or the reverse, is an error listing
  them. Only the normaliser (``normalizer.*``) is not copied: the training run sets it from its
  own data.
* ``expert`` -- the documented non-strict mapping: only ``expert.*`` tensors are copied
  (stage 1 -> stage 2). The source's other tensors (e.g. ``stage1_encoder.*``) are reported as
  unused; the model's other tensors (``backbone.*``, ``prompt_proj.*``) and any ``expert.*`` tensor
  the source lacks (e.g. the reasoning FiLM of a released ScaleDP) keep their initialisation and
  are reported as such.
* ``auto`` (default) -- ``expert`` when the source is a ScaleDP expert file or has no ``backbone.*``
  tensors while the model has a backbone (a stage-1 source for a stage-2/3 model); ``full``
  otherwise.

Sources: a checkpoint directory of this project (``model.safetensors``, with ``ema.safetensors``
on top when present, as ``policy.start_ckpt_path`` does), or an expert file written by
``python -m controller.convert_checkpoint REF.ckpt OUT.safetensors --trust-pickle --format scaledp``
(keys of :class:`controller.model.scaledp.ScaleDP`, mapped to ``expert.model.*``).

LoRA (:mod:`controller.policy.dexvla_lora`) on one side only, in ``full`` mode: a LoRA-trained
source going into a model without LoRA has its adapters merged (``W + (lora_alpha / r) B A``, alpha
read from the source's ``config.yaml``); a plain source going into a LoRA model fills the
``base_layer`` weights and the LoRA matrices keep their init (B = 0, so the same function). Both
LoRA with the same rank and targets: the tensors map one to one.

In every mode a shape mismatch of a tensor to be copied is an error naming the key and both
shapes, raised before anything is copied. Nothing is unpickled: safetensors only.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Mapping

import torch

from controller.policy.dexvla_lora import is_lora_key, lora_source_plan, merge_weight
from controller.workspace.checkpoint import (CONFIG_FILE, EMA_FILE, MODEL_FILE, CheckpointError, check_safetensors_file,
                                             resolve_checkpoint_dir)

logger = logging.getLogger(__name__)

MODES = ("auto", "full", "expert")
EXPERT_PREFIX = "expert."
EXPERT_NET_PREFIX = "expert.model."   # the action network (ScaleDP or UNet) inside the expert
#: safetensors metadata ``format`` of an expert file written by the ScaleDP converter.
SCALEDP_FORMAT = "scaledp-expert-v1"
#: where the keys of a ScaleDP expert file go in the policy.
SCALEDP_PREFIX = "expert.model."


class InitFromError(CheckpointError):
    """``policy.init_from`` cannot be applied (missing file, wrong keys, shape mismatch)."""


def _fmt(keys: List[str], n: int = 12) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _read_header_metadata(path: str) -> Dict[str, str]:
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def source_tensors(source: str) -> Dict[str, Any]:
    """Describe a source: ``{'kind', 'files': {key: path}, 'shapes': {key: shape}, 'prefix', 'weights'}``.

    Keys are already in the policy's naming (a ScaleDP expert file's keys get ``expert.model.``).
    """
    if os.path.isfile(source):
        entries = check_safetensors_file(source)
        meta = _read_header_metadata(source)
        if meta.get("format") != SCALEDP_FORMAT:
            raise InitFromError(f"policy.init_from='{source}' is a file but not a ScaleDP expert file (metadata "
                                f"format {meta.get('format')!r}, expected {SCALEDP_FORMAT!r}); pass a checkpoint "
                                f"directory or a file written by the converter's --format scaledp")
        keys = {SCALEDP_PREFIX + k: k for k in entries}
        return {"kind": "scaledp_expert", "files": {k: (source, v) for k, v in keys.items()},
                "shapes": {SCALEDP_PREFIX + k: tuple(e["shape"]) for k, e in entries.items()},
                "weights": "expert file"}
    if not os.path.isdir(source):
        raise InitFromError(f"policy.init_from='{source}' does not exist (a checkpoint directory or a "
                            f"converted ScaleDP .safetensors file)")
    try:
        ckpt = resolve_checkpoint_dir(source)
    except CheckpointError as exc:
        raise InitFromError(f"policy.init_from='{source}': {exc}") from exc
    model_path = os.path.join(ckpt, MODEL_FILE)
    entries = check_safetensors_file(model_path)
    files = {k: (model_path, k) for k in entries}
    shapes = {k: tuple(e["shape"]) for k, e in entries.items()}
    weights = "model.safetensors"
    ema_path = os.path.join(ckpt, EMA_FILE)
    if os.path.isfile(ema_path):
        ema = check_safetensors_file(ema_path)
        unknown = sorted(set(ema) - set(shapes))
        if unknown:
            raise InitFromError(f"'{ema_path}' has tensors {MODEL_FILE} lacks: {_fmt(unknown)}")
        files.update({k: (ema_path, k) for k in ema})
        weights = "ema.safetensors over model.safetensors"
    return {"kind": "checkpoint", "files": files, "shapes": shapes, "weights": weights}


def _source_lora_alpha(source: str) -> float:
    """``policy.lora_alpha`` of a LoRA-trained source checkpoint (its ``config.yaml``), for merging."""
    from omegaconf import OmegaConf
    path = os.path.join(resolve_checkpoint_dir(source), CONFIG_FILE)
    try:
        alpha = OmegaConf.select(OmegaConf.load(path), "policy.lora_alpha")
    except Exception as exc:  # noqa: BLE001 - missing or unreadable yaml
        raise InitFromError(f"policy.init_from='{source}' has LoRA adapters; reading lora_alpha from "
                            f"'{path}' failed: {exc}") from exc
    if alpha is None:
        raise InitFromError(f"policy.init_from='{source}' has LoRA adapters but '{path}' has no policy.lora_alpha")
    return float(alpha)


def choose_mode(mode: str, src: Mapping[str, Any], model_keys: List[str]) -> str:
    """Resolve ``auto`` (see the module docstring)."""
    if mode not in MODES:
        raise InitFromError(f"policy.init_from_mode must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    if src["kind"] == "scaledp_expert":
        return "expert"
    model_has_backbone = any(k.startswith("backbone.") for k in model_keys)
    source_has_backbone = any(k.startswith("backbone.") for k in src["shapes"])
    return "expert" if model_has_backbone and not source_has_backbone else "full"


def load_init_weights(policy: torch.nn.Module, source: str, mode: str = "auto") -> Dict[str, Any]:
    """Copy ``source``'s weights into ``policy`` (see the module docstring); returns the report::

        {'source', 'weights', 'mode', 'loaded': [keys], 'kept_init': [model keys not loaded],
         'unused': [source keys not loaded], 'normalizer': str}

    Raises :class:`InitFromError` (a :class:`CheckpointError`) for a missing/foreign source, a
    shape mismatch (naming the key) or, in ``full`` mode, missing/unexpected keys (listing them).
    """
    from safetensors import safe_open

    if mode not in MODES:
        raise InitFromError(f"policy.init_from_mode must be one of {MODES}, got {mode!r}")
    src = source_tensors(source)
    own = {k: v for k, v in policy.state_dict().items() if not k.startswith("normalizer.")}
    mode = choose_mode(mode, src, list(own))
    src_shapes = {k: s for k, s in src["shapes"].items() if not k.startswith("normalizer.")}
    plan = {"direction": None, "shapes": src_shapes, "fetch": {k: k for k in src_shapes}, "consumed": []}
    if mode == "full":  # LoRA on one side only: merge the source's adapters, or fill the base layers
        plan = lora_source_plan(src_shapes, list(own))
    shapes, fetch = plan["shapes"], plan["fetch"]
    lora_own = [k for k in own if is_lora_key(k)] if plan["direction"] == "into_base" else []
    if mode == "full":
        missing = sorted(set(own) - set(shapes) - set(lora_own))
        unexpected = sorted(set(shapes) - set(own))
        if missing or unexpected:
            parts = ([f"missing in the source: {_fmt(missing)}"] if missing else []) + \
                    ([f"unexpected (not in the model): {_fmt(unexpected)}"] if unexpected else [])
            raise InitFromError(f"policy.init_from='{source}' (mode full) does not fit the model: "
                                f"{'; '.join(parts)}. For a stage-1 source use init_from_mode=expert.")
        wanted = sorted(set(own) - set(lora_own))
    else:
        wanted = sorted(k for k in own if k.startswith(EXPERT_PREFIX) and k in shapes)
        # the action network itself must come whole: a source with another head (ScaleDP vs UNet) or
        # other depth would otherwise load almost nothing and train on from init without a word
        # (the condition's input embedding may be absent: the converter drops it on request when the
        # released expert was trained on another condition width, --drop-cond-obs-emb)
        absent = sorted(k for k in own if k.startswith(EXPERT_NET_PREFIX) and k not in shapes
                        and not k.startswith(EXPERT_NET_PREFIX + "cond_obs_emb."))
        if absent:
            raise InitFromError(f"policy.init_from='{source}' (mode expert): the source lacks {len(absent)} of the "
                                f"model's {sum(k.startswith(EXPERT_NET_PREFIX) for k in own)} action-network "
                                f"tensors ({_fmt(absent)}). Is it the same expert head (policy.expert.head: "
                                f"scaledp | unet) and depth?")
    wrong = [f"{k}: source {shapes[k]} vs model {tuple(own[k].shape)}" for k in wanted
             if tuple(own[k].shape) != shapes[k]]
    if wrong:
        raise InitFromError(f"policy.init_from='{source}': shape mismatch: {_fmt(wrong)}. The expert sizes "
                            f"(depth/width/heads, action/state dims, horizon, backbone width) must match.")
    alpha = _source_lora_alpha(source) if plan["direction"] == "merge" else None
    by_file: Dict[str, List[str]] = {}
    for k in wanted:
        first = fetch[k] if isinstance(fetch[k], str) else fetch[k][0]
        by_file.setdefault(src["files"][first][0], []).append(k)
    with torch.no_grad():
        for path, keys in by_file.items():
            with safe_open(path, framework="pt") as f:
                def read(key: str) -> torch.Tensor:
                    file_path, name = src["files"][key]
                    if file_path == path:
                        return f.get_tensor(name)
                    with safe_open(file_path, framework="pt") as other:
                        return other.get_tensor(name)
                for k in keys:
                    if isinstance(fetch[k], str):
                        own[k].copy_(read(fetch[k]))
                    else:  # (base, A, B): W + (alpha / r) B A
                        base, a_key, b_key = fetch[k]
                        own[k].copy_(merge_weight(read(base), read(a_key), read(b_key), alpha))
    used = set(plan["consumed"]) | {v if isinstance(v, str) else v[0] for k, v in fetch.items() if k in wanted}
    lora_note = {None: "", "merge": f"LoRA adapters of the source merged into {len(plan['consumed']) // 2} "
                                    f"weights (alpha {alpha})",
                 "into_base": f"source weights loaded into the base layers; {len(lora_own)} LoRA tensors "
                              f"keep their init (B = 0)"}[plan["direction"]]
    report = {"source": os.path.abspath(source), "weights": src["weights"], "mode": mode, "loaded": wanted,
              "kept_init": sorted(set(own) - set(wanted)), "unused": sorted(set(src_shapes) - used),
              "normalizer": "not copied: set from the training data (set_normalizer)", "lora": lora_note}
    return report


def format_init_report(report: Mapping[str, Any]) -> str:
    """One paragraph for the console: counts and every key not loaded (grouped by module)."""
    def groups(keys: List[str]) -> str:
        """``expert.*`` keys one by one (they matter for the carry-over), other modules counted."""
        counts: Dict[str, int] = {}
        for k in keys:
            head = k if k.startswith(EXPERT_PREFIX) else k.split(".")[0] + ".*"
            counts[head] = counts.get(head, 0) + 1
        return ", ".join(h if h.startswith(EXPERT_PREFIX) else f"{h} ({n})"
                         for h, n in sorted(counts.items())) or "none"

    return (f"init_from {report['source']} [{report['weights']}], mode {report['mode']}: "
            f"loaded {len(report['loaded'])} tensors; kept at init (not in source / not mapped): "
            f"{groups(report['kept_init'])}; unused source tensors: {groups(report['unused'])}; "
            f"normalizer {report['normalizer']}" + (f"; {report['lora']}" if report.get("lora") else ""))
