"""LoRA on DexVLA's language model (stages 2/3) with ``peft``.

:func:`apply_lora` injects peft LoRA layers in place (``peft.inject_adapter_in_model``: the model
stays a ``Qwen2VLForConditionalGeneration``, so generation and the backbone wrapper are unchanged)
into the attention and MLP projections of the **language model's decoder layers only**; the vision
tower, its merger, the embeddings and ``lm_head`` are not adapted. Every base weight of the
language model is then frozen; only the LoRA matrices train there (the policy's projector and
expert train as usual; the vision tower follows ``backbone.freeze_vision``).

Checkpoint format: the adapter is **kept, not merged**. The policy's state dict (what
``save_checkpoint`` writes to ``model.safetensors``) then holds, for every adapted projection,
``...<proj>.base_layer.weight`` / ``.bias`` (the frozen base weights) and
``...<proj>.lora_A.default.weight`` (r, in) / ``...<proj>.lora_B.default.weight`` (out, r). The
checkpoint's config carries ``lora_rank``/``lora_alpha``/..., so ``load_policy`` rebuilds the same
wrapped model and loads it strictly; training resumes exactly (optimiser and EMA see the same
parameters). :func:`merge_lora_state_dict` turns such a state dict into the plain layout
(``W + (alpha / r) * B @ A`` under the original key), which stage chaining uses when a LoRA
source goes into a model without LoRA; :func:`unmerged_key` maps a plain key to its
``base_layer`` name for the opposite direction (a LoRA model started from a plain checkpoint).
"""
from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn

#: default targets: the attention (q, k, v, o) and MLP (gate, up, down) projections of Qwen2's decoder layers
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER = "default"
_LORA_KEY = re.compile(r"^(?P<prefix>.*)\.lora_(?P<ab>[AB])\.(?P<name>[^.]+)\.weight$")


def lora_target_regex(target_modules: Sequence[str]) -> str:
    """peft ``target_modules`` regex (matched in full against module names) restricted to the language
    model's decoder layers: ``...language_model.layers.N.<self_attn|mlp>.<name>``."""
    names = [str(t) for t in target_modules]
    if not names or any(not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n) for n in names):
        raise ValueError(f"policy.lora_target_modules must be module names such as q_proj, got {names!r}")
    return r".*language_model\.layers\.\d+\.(self_attn|mlp)\.(" + "|".join(map(re.escape, names)) + ")"


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
               target_modules: Optional[Sequence[str]] = None, seed: int = 0) -> int:
    """Inject LoRA (rank ``rank``, scale ``alpha / rank``, input dropout ``dropout``) into ``model``
    (a ``Qwen2VLForConditionalGeneration``) in place, freeze the language model's base weights and
    return the number of adapted layers. ``lora_B`` starts at zero (peft's default), so the wrapped
    model computes exactly what it did before. ``lora_A`` is drawn from its own generator seeded with
    ``seed`` (the global RNG stream is left untouched, so the rest of the policy initialises as without
    LoRA)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:  # pragma: no cover - peft is a dependency
        raise ImportError("policy.lora_rank > 0 needs the 'peft' package (pip install peft)") from exc
    if rank <= 0:
        raise ValueError(f"lora rank must be > 0, got {rank}")
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout),
                        target_modules=lora_target_regex(target_modules or DEFAULT_TARGETS), bias="none",
                        init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    adapted = 0
    for name, param in model.named_parameters():
        is_lora = ".lora_A." in name or ".lora_B." in name
        if is_lora:
            param.requires_grad_(True)
        elif ".language_model." in name or name.startswith("lm_head."):
            param.requires_grad_(False)          # frozen base LM (embeddings, layers, norms, lm_head)
        adapted += int(is_lora and ".lora_A." in name)
    if adapted == 0:
        raise ValueError(f"LoRA adapted no layer: no module of the language model matches "
                         f"{list(target_modules or DEFAULT_TARGETS)}")
    return adapted


def unmerged_key(key: str, lora_keys: Mapping[str, object]) -> str:
    """Plain key ``...proj.weight`` -> ``...proj.base_layer.weight`` when the LoRA model has that name."""
    head, _, leaf = key.rpartition(".")
    wrapped = f"{head}.base_layer.{leaf}"
    return wrapped if wrapped in lora_keys else key


def merge_lora_state_dict(state: Mapping[str, torch.Tensor], alpha: float) -> Dict[str, torch.Tensor]:
    """A LoRA (adapter-keys) state dict -> the plain layout: ``X.base_layer.{weight,bias}`` becomes
    ``X.{weight,bias}`` with ``weight = W + (alpha / r) * B @ A`` (W (out, in), A (r, in), B (out, r));
    the LoRA keys disappear. A state dict without LoRA keys is returned unchanged (as a new dict)."""
    out: Dict[str, torch.Tensor] = {}
    pairs: Dict[str, Dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        m = _LORA_KEY.match(k)
        if m:
            pairs.setdefault(m["prefix"], {})[m["ab"]] = v
        else:
            out[k.replace(".base_layer.", ".")] = v
    for prefix, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"incomplete LoRA pair at {prefix}: has {sorted(ab)}")
        out[f"{prefix}.weight"] = merge_weight(out[f"{prefix}.weight"], ab["A"], ab["B"], alpha)
    return out


def merge_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, alpha: float) -> torch.Tensor:
    """W (out, in) + (alpha / r) * B (out, r) @ A (r, in) -> (out, in), computed in float32, W's dtype."""
    A, B = lora_a.float(), lora_b.float()                               # (r, in), (out, r)
    return (weight.float() + (float(alpha) / A.shape[0]) * (B @ A)).to(weight.dtype)  # (out, in)


def lora_source_plan(source_shapes: Mapping[str, tuple], model_keys: Sequence[str]) -> Dict[str, object]:
    """How a source state dict maps onto a model when exactly one of them carries LoRA adapters.

    Returns ``{'direction': None | 'merge' | 'into_base', 'shapes': {model key: shape} (the source seen
    in the model's naming), 'fetch': {model key: source key or (base, A, B) keys to merge},
    'consumed': source LoRA keys used by a merge}``. ``merge``: LoRA source, plain model (each
    ``X.weight`` = merged ``X.base_layer.weight``). ``into_base``: plain source, LoRA model (``X.weight``
    goes to ``X.base_layer.weight``; the model's LoRA matrices keep their init, B = 0: the same
    function as the source). ``None``: names are used as they are.
    """
    src_lora = any(is_lora_key(k) for k in source_shapes)
    model_lora = any(is_lora_key(k) for k in model_keys)
    identity = {k: k for k in source_shapes}
    if src_lora == model_lora:
        return {"direction": None, "shapes": dict(source_shapes), "fetch": identity, "consumed": []}
    shapes: Dict[str, tuple] = {}
    fetch: Dict[str, object] = {}
    consumed = []
    if model_lora:  # plain source -> base_layer names of the LoRA model
        own = set(model_keys)
        for k, shape in source_shapes.items():
            name = unmerged_key(k, own)
            shapes[name], fetch[name] = shape, k
        return {"direction": "into_base", "shapes": shapes, "fetch": fetch, "consumed": consumed}
    for k, shape in source_shapes.items():  # LoRA source -> merged plain names
        if is_lora_key(k):
            continue
        name = k.replace(".base_layer.", ".")
        shapes[name], fetch[name] = shape, k
        prefix = name[:-len(".weight")] if name.endswith(".weight") else None
        a_key, b_key = f"{prefix}.lora_A.{ADAPTER}.weight", f"{prefix}.lora_B.{ADAPTER}.weight"
        if prefix is not None and ".base_layer." in k and a_key in source_shapes and b_key in source_shapes:
            fetch[name] = (k, a_key, b_key)
            consumed += [a_key, b_key]
    for k in source_shapes:  # a LoRA matrix without its base weight: left for the caller to report
        if is_lora_key(k) and k not in consumed:
            shapes[k], fetch[k] = source_shapes[k], k
    return {"direction": "merge", "shapes": shapes, "fetch": fetch, "consumed": consumed}


def is_lora_key(key: str) -> bool:
    """True for a peft LoRA matrix key (``.lora_A.`` / ``.lora_B.``)."""
    return ".lora_A." in key or ".lora_B." in key
