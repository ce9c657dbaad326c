"""What the original DexGraspVLA code writes, and how it maps onto this project's policy.

Pure functions, no unpickling (that happens only in :mod:`controller.convert_checkpoint`, behind
``--trust-pickle``). Facts about the original (github.com/Psi-Robot/DexGraspVLA) used here:

* ``BaseWorkspace.save_checkpoint`` (controller/workspace/base_workspace.py) writes
  ``{'cfg': OmegaConf, 'state_dicts': {'model', 'ema_model'?, 'optimizer'?}, 'pickles':
  {'global_step', 'epoch', '_output_dir'}}`` with ``pickle_module=dill``; the pickles are
  ``dill.dumps`` bytes. ``ema_model`` exists only with ``training.use_ema``; ``optimizer`` only with
  ``training.resume`` (else ``exclude_keys=['optimizer']``). The LR scheduler and the EMA counter
  are local variables of ``run()``: never saved. No RNG state is saved.
* ``ModuleAttrMixin`` (controller/model/common/module_attr_mixin.py) gives the policy, the
  observation encoder and the DiT each ``_dummy_variable = nn.Parameter(requires_grad=False)``:
  an empty (0,) tensor -> keys ``_dummy_variable``, ``obs_encoder._dummy_variable``,
  ``model._dummy_variable``.
* The DINOv2 backbones come from the official hub code: ``mask_token`` (pretraining only; timm's
  DINOv2 has none), ``pos_embed`` always for 518 px (37x37 + 1), interpolated at run time
  (``interpolate_pos_encoding``: bicubic, scale factor (g + 0.1) / 37, no antialiasing) when the
  images are smaller; blocks ``blocks.N.*`` (``block_chunks=0``), SwiGLU ``mlp.w12``/``mlp.w3`` for
  ViT-g only.
* ``ObsEncoder.output_shape()`` is hard-coded to 2739 tokens, so the DiT's ``cond_pos_emb`` has
  2740 rows at any image size; only the first N+1 are read (``cond_pos_emb[:, :tc]``).
* ``CrossAttention`` registers ``masks``/``probs`` buffers when ``use_attn_mask`` (fixed
  condition-dropout masks); ours draws them on the fly.
* ``DexGraspVLAController.get_optimizer``: AdamW, trainable parameters in ``named_parameters()``
  order, split into >=2-D (decayed) then the rest; the dummies, DINOv2 and normaliser are frozen.
"""
from __future__ import annotations

import math
import pickletools
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

BACKBONE_PREFIXES = ("obs_encoder.dino_head.", "obs_encoder.dino_wrist.")
MASK_BUFFERS = (".cross_attn.masks", ".cross_attn.probs")
NORMALIZER_PREFIX = "normalizer."
DUMMY_REASON = ("empty (0,) parameter of the original's ModuleAttrMixin "
                "(controller/model/common/module_attr_mixin.py); holds no weights")
REASONS = {
    "mask_token": "official DINOv2 mask token: used only for masked-image pretraining, never at "
                  "inference; timm's DINOv2 has no such parameter",
    "mask_buffers": "fixed condition-dropout masks of the original's CrossAttention (use_attn_mask); "
                    "ours draws the masks on the fly from policy.cond_drop_probs",
    "empty": "empty tensor (no values)",
}
POLICY_TARGET = "controller.policy.dexgraspvla_controller.DexGraspVLAController"
#: The original's DexGraspVLAController.__init__ defaults, for fields a cfg leaves out.
POLICY_DEFAULTS = {"n_layer": 7, "n_head": 8, "p_drop_attn": 0.1, "use_attn_mask": False}
#: Keys of the original's policy config that are not scheduler ``step`` kwargs.
POLICY_KNOWN = {"_target_", "shape_meta", "noise_scheduler", "obs_encoder", "num_inference_steps",
                "n_layer", "n_head", "p_drop_attn", "use_attn_mask", "start_ckpt_path"}
#: Settings the original fixes in code (obs_encoder.py, transformer_for_action_diffusion.py,
#: dexgraspvla_controller.py), as paths of our config.
ORIGINAL_CONSTANTS = {
    "policy.obs_encoder.head.frozen": True,
    "policy.obs_encoder.wrist.frozen": True,
    "policy.obs_encoder.head.depth": None,
    "policy.obs_encoder.head.embed_dim": None,
    "policy.obs_encoder.head.num_heads": None,
    "policy.obs_encoder.wrist.depth": None,
    "policy.obs_encoder.wrist.embed_dim": None,
    "policy.obs_encoder.wrist.num_heads": None,
    "policy.obs_encoder.mask_layers": 4,
    "policy.obs_encoder.mask_heads": 8,
    "policy.obs_encoder.mask_mlp_ratio": 4.0,
    "policy.obs_encoder.state_hidden": 256,
    "policy.obs_encoder.dropout": 0.1,
    "policy.obs_encoder.color_jitter.brightness": 0.3,
    "policy.obs_encoder.color_jitter.contrast": 0.3,
    "policy.obs_encoder.color_jitter.saturation": 0.3,
    "policy.obs_encoder.color_jitter.hue": 0.1,
    "policy.obs_encoder.mask_geometry": False,
    "policy.obs_encoder.share_backbone": False,
    "policy.mlp_ratio": 1.0,
    "policy.cond_drop_probs": [0.1, 0.1, 0.1],
    "policy.immiscible_noise": True,
}
#: Training settings carried with --with-optimizer (the original's path = ours).
TRAINING_FIELDS = ("optimizer.lr", "optimizer.weight_decay", "optimizer.betas", "training.seed",
                   "training.lr_scheduler", "training.lr_warmup_steps", "training.num_epochs",
                   "training.gradient_accumulate_every", "training.use_ema", "ema.update_after_step",
                   "ema.inv_gamma", "ema.power", "ema.min_value", "ema.max_value", "dataloader.batch_size")


class ConversionError(RuntimeError):
    """The input is not an original-format checkpoint, or does not fit the chosen configuration."""


# ---------------------------------------------------------------------------- pickled scalars
_VALUE_OPS = {"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT"}


def decode_pickled_scalar(data: Any, what: str) -> "int | float | None":
    """The int/float/None in a ``dill.dumps`` blob, read from its opcodes (nothing is executed)."""
    if not isinstance(data, (bytes, bytearray)):
        raise ConversionError(f"pickles['{what}'] is {type(data).__name__}, expected dill.dumps bytes")
    try:
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(bytes(data))]
    except Exception as exc:  # noqa: BLE001 - malformed opcode stream
        raise ConversionError(f"pickles['{what}'] is not a pickled number: {exc}") from exc
    body = [(n, a) for n, a in ops if n not in ("PROTO", "FRAME", "MEMOIZE", "STOP")]
    if len(body) == 1 and body[0][0] == "NONE":
        return None
    if len(body) == 1 and body[0][0] in _VALUE_OPS and isinstance(body[0][1], (int, float)):
        return body[0][1]
    raise ConversionError(f"pickles['{what}'] holds {[n for n, _ in body]}, not a single pickled number")


# ---------------------------------------------------------------------------- the original's cfg
_MISSING = object()
_PLAIN_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\}$")


class CfgReader:
    """Read fields of the original's cfg (unresolved container) following plain ``${a.b}``
    references only; resolver calls (``${eval:...}``, ``${now:...}``) are never evaluated."""

    def __init__(self, tree: Mapping) -> None:
        self.tree = tree

    def _walk(self, dotted: str) -> Any:
        node: Any = self.tree
        for part in dotted.split("."):
            node = self._follow(node, dotted)
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return _MISSING
        return self._follow(node, dotted)

    def _follow(self, node: Any, dotted: str, depth: int = 0) -> Any:
        if isinstance(node, str) and "${" in node:
            m = _PLAIN_REF.match(node.strip())
            if not m or depth > 20:
                raise ConversionError(f"cfg field '{dotted}' is '{node}': an interpolation the converter does not "
                                      f"evaluate; pass the value with --override")
            return self._follow(self._walk(m.group(1)), dotted, depth + 1)
        return node

    def get(self, dotted: str, default: Any = _MISSING) -> Any:
        value = self._walk(dotted)
        if value is _MISSING:
            if default is _MISSING:
                raise ConversionError(f"the file's cfg has no '{dotted}' (needed to rebuild the model)")
            return default
        return self.resolved(value, dotted)

    def keys(self, dotted: str) -> List[str]:
        """Keys of the mapping at ``dotted`` (its values are not resolved)."""
        node = self._walk(dotted)
        return list(node) if isinstance(node, Mapping) else []

    def resolved(self, value: Any, dotted: str) -> Any:
        value = self._follow(value, dotted)
        if isinstance(value, Mapping):
            return {k: self.resolved(v, f"{dotted}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolved(v, f"{dotted}.{i}") for i, v in enumerate(value)]
        return value


def cfg_tree(cfg: Any) -> Optional[Dict[str, Any]]:
    """The payload's cfg as a plain, unresolved dict (None when the file has none)."""
    if cfg is None:
        return None
    from omegaconf import OmegaConf
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=False)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise ConversionError(f"the file's cfg is a {type(cfg).__name__}, not a config")


def reference_model_fields(tree: Mapping) -> Dict[str, Any]:
    """The model the original's cfg describes, as values at paths of *our* config.

    Raises :class:`ConversionError` naming the field when a value cannot be expressed here."""
    from controller.common.registry import registered_targets
    from controller.model.vision.backbones import BACKBONES, PATCH_SIZE, feature_dim_of

    r = CfgReader(tree)
    out: Dict[str, Any] = {}
    shape = r.get("task.image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) for v in shape)):
        raise ConversionError(f"cfg field 'task.image_shape' is {shape!r}, expected [3, H, W]")
    if shape[1] != shape[2] or shape[1] % PATCH_SIZE:
        raise ConversionError(f"cfg field 'task.image_shape' is {shape}: this project's image_size is one side of a "
                              f"square image divisible by {PATCH_SIZE}")
    mshape = r.get("task.mask_image_shape", None)
    if mshape is not None and list(mshape)[1:] != shape[1:]:
        raise ConversionError(f"cfg field 'task.mask_image_shape' {mshape} differs from task.image_shape {shape}: "
                              f"head and wrist images share one image_size here")
    out["image_size"] = shape[1]
    out["n_action_steps"] = r.get("n_action_steps")
    out["n_obs_steps"] = r.get("n_obs_steps", 1)
    out["shape_meta.action.shape"] = list(r.get("task.shape_meta.action.shape", [13]))
    out["shape_meta.obs.right_state.shape"] = list(r.get("task.shape_meta.obs.right_state.shape", [13]))

    target = r.get("policy._target_", POLICY_TARGET)
    if target != POLICY_TARGET:
        raise ConversionError(f"cfg field 'policy._target_' is '{target}', not the original's {POLICY_TARGET}")
    sched = r.get("policy.noise_scheduler")
    if not isinstance(sched, Mapping):
        raise ConversionError("cfg field 'policy.noise_scheduler' is not a mapping")
    if sched.get("_target_") not in registered_targets(("policy",)):
        raise ConversionError(f"cfg field 'policy.noise_scheduler._target_' is '{sched.get('_target_')}', not a "
                              f"scheduler this project builds")
    if sched.get("prediction_type", "epsilon") not in ("epsilon", "sample"):
        raise ConversionError(f"cfg field 'policy.noise_scheduler.prediction_type' is "
                              f"'{sched.get('prediction_type')}'; supported: epsilon, sample")
    for key, value in sched.items():
        out[f"policy.noise_scheduler.{key}"] = value
    dims = []
    for cam in ("head", "wrist"):
        model_type = r.get(f"policy.obs_encoder.model_config.{cam}.model_type")
        if model_type not in BACKBONES or not str(model_type).startswith("dinov2_"):
            supported = ", ".join(k for k in BACKBONES if k.startswith("dinov2_"))
            raise ConversionError(f"cfg field 'policy.obs_encoder.model_config.{cam}.model_type' is "
                                  f"'{model_type}'; supported: {supported}")
        out[f"policy.obs_encoder.{cam}.model_type"] = model_type
        dims.append(feature_dim_of(model_type))
    out["policy.obs_encoder.feature_dim"] = max(dims)
    steps = r.get("policy.num_inference_steps", None)
    out["policy.num_inference_steps"] = steps if steps is not None else sched.get("num_train_timesteps")
    for key, default in POLICY_DEFAULTS.items():
        out[f"policy.{key}"] = r.get(f"policy.{key}", default)
    for key in r.keys("policy"):
        if key not in POLICY_KNOWN:  # passed to scheduler.step by the original
            out[f"policy.{key}"] = r.get(f"policy.{key}")
    out.update(ORIGINAL_CONSTANTS)
    return out


def reference_training_fields(tree: Mapping) -> Dict[str, Any]:
    """The original run's optimiser/schedule/EMA settings that exist in the cfg (paths = ours)."""
    r = CfgReader(tree)
    out = {}
    for path in TRAINING_FIELDS:
        value = r.get(path, None)
        if value is not None:
            out[path] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    text = str(value)
    return text if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) else "'" + text.replace("'", "\\'") + "'"


_BACKBONE_DEFAULTS = {"frozen": True, "depth": None, "embed_dim": None, "num_heads": None,
                      "local_weights_path": None}


def our_default(path: str) -> Any:
    """What our code uses when a policy config leaves ``path`` out (constructor defaults)."""
    import inspect

    parts = path.split(".")
    if parts[:2] == ["policy", "obs_encoder"] and len(parts) == 4 and parts[2] in ("head", "wrist"):
        return _BACKBONE_DEFAULTS.get(parts[3], _MISSING)
    if parts[:2] == ["policy", "obs_encoder"] and len(parts) == 3:
        from controller.model.vision.obs_encoder import ObsEncoder as cls
    elif parts[0] == "policy" and len(parts) == 2:
        from controller.policy.dexgraspvla_controller import DexGraspVLAController as cls
    else:
        return _MISSING
    param = inspect.signature(cls.__init__).parameters.get(parts[-1])
    return _MISSING if param is None or param.default is inspect.Parameter.empty else param.default


def config_differences(fields: Mapping[str, Any], our_cfg: Any) -> List[Dict[str, Any]]:
    """Fields whose value in ``our_cfg`` (a composed config) differs from the original's, each
    as ``{"field", "preset", "file", "override"}`` (``override``: the Hydra override that fixes it)."""
    from omegaconf import OmegaConf

    diffs = []
    for path, theirs in fields.items():
        ours = OmegaConf.select(our_cfg, path, default=_MISSING)
        present = ours is not _MISSING
        if OmegaConf.is_config(ours):
            ours = OmegaConf.to_container(ours, resolve=True)
        if present and _same(ours, theirs):
            continue
        if not present:
            default = our_default(path)
            if (default is _MISSING and theirs is None) or (default is not _MISSING and _same(default, theirs)):
                continue
        override = f"{path}={_format_value(theirs)}" if present else f"+{path}={_format_value(theirs)}"
        diffs.append({"field": path, "preset": ours if present else "(absent)", "file": theirs,
                      "override": override})
    return diffs


def override_key(override: str) -> str:
    """``+a.b=1`` / ``a.b=1`` / ``~a.b`` -> ``a.b``."""
    return override.lstrip("+~").split("=", 1)[0]


# ---------------------------------------------------------------------------- weights
def dinov2_runtime_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """The positional embedding the official DINOv2 adds for a ``grid`` (rows, cols) of patches:
    its ``interpolate_pos_encoding`` (class token kept; patch part bicubic with scale factor
    (g + 0.1) / M, no antialiasing; in float32, returned in the input dtype)."""
    n = pos_embed.shape[1] - 1
    m = math.isqrt(n)
    if m * m != n:
        raise ConversionError(f"pos_embed has {n} patch rows, not a square grid")
    if (m, m) == tuple(grid):
        return pos_embed
    dim = pos_embed.shape[-1]
    patch = pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    scale = ((grid[0] + 0.1) / m, (grid[1] + 0.1) / m)
    patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(patch.shape[-2:]) != tuple(grid):
        raise ConversionError(f"pos_embed interpolation gave a {tuple(patch.shape[-2:])} grid, expected {grid}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)
    return torch.cat([pos_embed[:, :1].float(), patch], dim=1).to(pos_embed.dtype)


_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.(.*)$")


def _backbone_rename(sub: str) -> str:
    """Official DINOv2 sub-key -> timm's: chunked blocks flattened, SwiGLU w12/w3 -> fc1/fc2."""
    m = _CHUNKED.match(sub)
    if m:
        sub = f"blocks.{m.group(1)}.{m.group(2)}"
    return re.sub(r"^(blocks\.\d+\.mlp\.)w12\.", r"\1fc1.", re.sub(r"^(blocks\.\d+\.mlp\.)w3\.", r"\1fc2.", sub))


def _shape(t: Any) -> List[int]:
    return list(t.shape) if torch.is_tensor(t) else []


class KeyMapping:
    """Where every tensor of the file went."""

    def __init__(self) -> None:
        self.kept: List[str] = []
        self.renamed: Dict[str, str] = {}
        self.resampled: Dict[str, Dict[str, Any]] = {}
        self.truncated: Dict[str, Dict[str, Any]] = {}
        self.dropped: Dict[str, str] = {}
        self.name_map: Dict[str, str] = {}        # file key -> our key, for every tensor carried
        self.slices: Dict[str, int] = {}          # our key -> rows kept (truncated tensors)

    def counts(self) -> Dict[str, int]:
        return {"kept": len(self.kept), "renamed": len(self.renamed), "resampled": len(self.resampled),
                "truncated": len(self.truncated), "dropped": len(self.dropped)}

    def as_dict(self) -> Dict[str, Any]:
        return {"counts": self.counts(), "kept": list(self.kept), "renamed": dict(self.renamed),
                "resampled": dict(self.resampled), "truncated": dict(self.truncated), "dropped": dict(self.dropped)}


def _fmt(items: Sequence[str], limit: int = 12) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def map_model_state(ref_sd: Mapping[str, Any], target: Mapping[str, Tuple[int, ...]], source: str = "model"
                    ) -> Tuple[Dict[str, torch.Tensor], KeyMapping]:
    """Map the original's policy state dict onto ours (``target``: our key -> shape; the
    normaliser's keys may be absent from it: a fresh normaliser is empty).

    Every file tensor is kept, renamed, resampled, truncated or dropped (empty tensors, DINOv2
    ``mask_token``, the condition-mask buffers); anything else that does not fit -- an unknown or
    missing non-empty tensor, a shape that cannot be mapped -- raises :class:`ConversionError`
    naming it."""
    km = KeyMapping()
    out: Dict[str, torch.Tensor] = {}
    unknown, mismatched = [], []
    for key, t in ref_sd.items():
        if not torch.is_tensor(t):
            unknown.append(f"{key} ({type(t).__name__}, not a tensor)")
            continue
        new, backbone = key, None
        if key.startswith(BACKBONE_PREFIXES):
            backbone = next(p for p in BACKBONE_PREFIXES if key.startswith(p))
            sub = key[len(backbone):]
            if sub == "mask_token" and new not in target:
                km.dropped[key] = REASONS["mask_token"]
                continue
            new = backbone + _backbone_rename(sub)
        if new not in target:
            if key.startswith(NORMALIZER_PREFIX + "params_dict."):
                out[key] = t
                km.kept.append(key)
                km.name_map[key] = key
            elif t.numel() == 0:
                km.dropped[key] = DUMMY_REASON if key.endswith("_dummy_variable") else REASONS["empty"]
            elif key.endswith(MASK_BUFFERS):
                km.dropped[key] = REASONS["mask_buffers"]
            else:
                unknown.append(f"{key} {_shape(t)}")
            continue
        want = tuple(target[new])
        if tuple(t.shape) == want:
            out[new] = t
            if new != key:
                km.renamed[key] = new
            else:
                km.kept.append(key)
        elif backbone and new == backbone + "pos_embed" and t.dim() == 3 and t.shape[-1] == want[-1]:
            n = want[1] - 1
            g = math.isqrt(n)
            if g * g != n:
                mismatched.append(f"{key}: file {_shape(t)} vs model {list(want)}")
                continue
            out[new] = dinov2_runtime_pos_embed(t, (g, g))
            km.resampled[new] = {"from": _shape(t), "to": list(want),
                                 "how": f"bicubic {math.isqrt(t.shape[1] - 1)}x{math.isqrt(t.shape[1] - 1)} -> "
                                        f"{g}x{g} patches, as DINOv2's interpolate_pos_encoding does at run time"}
        elif new == "model.cond_pos_emb" and t.dim() == 3 and t.shape[0] == 1 and t.shape[2] == want[2] \
                and t.shape[1] > want[1]:
            out[new] = t[:, :want[1]].clone()
            km.slices[new] = want[1]
            km.truncated[new] = {"from": _shape(t), "to": list(want),
                                 "how": f"first {want[1]} rows: the original reads cond_pos_emb[:, :N+1] only "
                                        f"(its {t.shape[1]} rows come from ObsEncoder.output_shape()'s "
                                        f"hard-coded 2739)"}
        else:
            mismatched.append(f"{key}: file {_shape(t)} vs model {list(want)}")
            continue
        km.name_map[key] = new
    missing = [f"{k} {list(s)}" for k, s in target.items() if k not in out and not k.startswith(NORMALIZER_PREFIX)]
    if not any(k.startswith(NORMALIZER_PREFIX + "params_dict.action.") for k in out):
        missing.append("normalizer.params_dict.action.* (the action normaliser)")
    problems = []
    if unknown:
        problems.append(f"unknown non-empty tensors in the file: {_fmt(unknown)}")
    if missing:
        problems.append(f"missing keys (the model needs them, the file lacks them): {_fmt(missing)}")
    if mismatched:
        problems.append(f"shape mismatch: {_fmt(mismatched)}")
    if problems:
        raise ConversionError(f"state_dicts['{source}'] does not fit the model: " + "; ".join(problems))
    return out, km


def original_trainable_names(ref_sd: Mapping[str, Any]) -> List[str]:
    """The parameters the original's optimizer holds, in its order: the state dict's order
    (= ``named_parameters()`` for parameters) without the frozen or non-parameter entries."""
    return [k for k, t in ref_sd.items()
            if torch.is_tensor(t) and t.numel() > 0 and not k.startswith(BACKBONE_PREFIXES)
            and not k.startswith(NORMALIZER_PREFIX) and not k.endswith(MASK_BUFFERS)]


# ---------------------------------------------------------------------------- optimizer
class NotExact(Exception):
    """The original optimizer state cannot be mapped exactly onto ours (the message says why)."""


#: AdamW hyper-parameters carried from the original's groups; the implementation flags
#: (foreach, fused, capturable, differentiable) stay ours.
GROUP_NUMBERS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "initial_lr")


def map_optimizer_state(ref_opt: Any, ref_sd: Mapping[str, Any], km: KeyMapping,
                        our_groups: Sequence[Sequence[str]], our_template: Mapping[str, Any],
                        our_shapes: Mapping[str, Tuple[int, ...]]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The original AdamW state dict re-keyed for our optimizer.

    ``our_groups``: our optimizer's parameter names per group, in its order; ``our_template``: our
    optimizer's ``state_dict()`` (for the group keys). Raises :class:`NotExact` when the file's
    optimizer is not the original ``get_optimizer``'s over these parameters."""
    if not isinstance(ref_opt, Mapping) or "state" not in ref_opt or "param_groups" not in ref_opt:
        raise NotExact("state_dicts['optimizer'] is not a torch optimizer state dict (no 'state'/'param_groups')")
    groups, state = list(ref_opt["param_groups"]), ref_opt["state"]
    names = original_trainable_names(ref_sd)
    ref_split = [[n for n in names if ref_sd[n].dim() >= 2], [n for n in names if ref_sd[n].dim() < 2]]
    if len(groups) != 2:
        raise NotExact(f"the file's optimizer has {len(groups)} parameter groups; the original's get_optimizer "
                       f"makes 2 (decayed >=2-D tensors, then the rest)")
    sizes = [len(g.get("params", [])) for g in groups]
    want = [len(s) for s in ref_split]
    if sizes != want:
        raise NotExact(f"the file's optimizer groups hold {sizes[0]} + {sizes[1]} parameters but the model's "
                       f"trainable tensors split {want[0]} + {want[1]}: it was not built by the original's "
                       f"get_optimizer over this model, so parameter indices cannot be matched to names")
    index_name: Dict[int, str] = {}
    expected = 0
    for g, group_names in zip(groups, ref_split):
        ids = list(g["params"])
        if ids != list(range(expected, expected + len(ids))):
            raise NotExact(f"the file's optimizer numbers its parameters {ids[:4]}..., not consecutively "
                           f"from {expected}: not a torch state_dict() of the original's optimizer")
        index_name.update({i: n for i, n in zip(ids, group_names)})
        expected += len(ids)
    for idx, entry in state.items():
        name = index_name.get(int(idx))
        if name is None:
            raise NotExact(f"the file's optimizer has state for parameter index {idx}, which no group lists")
        for k, v in entry.items():
            if torch.is_tensor(v) and v.dim() > 0 and tuple(v.shape) != tuple(ref_sd[name].shape):
                raise NotExact(f"optimizer state '{k}' of parameter #{idx} has shape {list(v.shape)} but the "
                               f"original's parameter #{idx} is {name} {list(ref_sd[name].shape)}")
    ours_from = {km.name_map[n]: n for n in names if n in km.name_map}
    flat_ours = [n for g in our_groups for n in g]
    extra = sorted(set(flat_ours) - set(ours_from))
    lost = sorted(set(ours_from) - set(flat_ours))
    if extra or lost:
        raise NotExact("our optimizer's trainable parameters differ from the original's: "
                       + "; ".join(p for p in (f"only ours: {_fmt(extra)}" if extra else "",
                                               f"only the original's: {_fmt(lost)}" if lost else "") if p))
    name_index = {n: i for i, n in index_name.items()}
    new_state: Dict[int, Dict[str, Any]] = {}
    new_groups = []
    idx = 0
    steps = set()
    template_groups = list(our_template["param_groups"])
    if len(template_groups) != len(our_groups):
        raise NotExact("our optimizer's groups do not match the parameter split it was asked to fill")
    for g_i, (tmpl, group_names) in enumerate(zip(template_groups, our_groups)):
        ids = []
        for ours in group_names:
            ref_name = ours_from[ours]
            entry = state.get(name_index[ref_name], state.get(str(name_index[ref_name])))
            if entry is not None:
                rows = km.slices.get(ours)
                moved = {}
                for k, v in entry.items():
                    if torch.is_tensor(v) and v.dim() > 0:
                        v = v[:, :rows] if rows is not None else v
                        if tuple(v.shape) != tuple(our_shapes[ours]):
                            raise NotExact(f"optimizer state '{k}' of {ours} maps to {list(v.shape)}, our "
                                           f"parameter is {list(our_shapes[ours])}")
                        v = v.detach().clone().contiguous()
                    elif torch.is_tensor(v):
                        v = v.detach().clone()
                    if k == "step":
                        steps.add(int(float(v)))
                    moved[k] = v
                new_state[idx] = moved
            ids.append(idx)
            idx += 1
        group = {k: v for k, v in tmpl.items() if k != "params"}
        for k in GROUP_NUMBERS:
            if k in groups[g_i]:
                v = groups[g_i][k]
                group[k] = tuple(float(b) for b in v) if k == "betas" else v
        group["params"] = ids
        new_groups.append(group)
    info = {"parameters": idx, "with_state": len(new_state), "adam_steps": sorted(steps),
            "groups": [{k: g[k] for k in GROUP_NUMBERS if k in g} for g in new_groups]}
    return {"state": new_state, "param_groups": new_groups}, info


def scheduler_state(steps: int, groups: Optional[Sequence[Mapping[str, Any]]], n_groups: int) -> Dict[str, Any]:
    """A ``LambdaLR`` state dict (the diffusers schedulers) positioned after ``steps`` steps."""
    state: Dict[str, Any] = {"last_epoch": int(steps), "_step_count": int(steps) + 1, "lr_lambdas": [None] * n_groups}
    if groups:
        state["_last_lr"] = [float(g["lr"]) for g in groups]
        if all("initial_lr" in g for g in groups):
            state["base_lrs"] = [float(g["initial_lr"]) for g in groups]
    return state


def ema_decay(step: int, fields: Mapping[str, Any]) -> float:
    """The EMA decay the original used at ``step`` (EMAModel.get_decay; diffusion-policy warm-up)."""
    after = int(fields.get("ema.update_after_step", 0))
    inv_gamma = float(fields.get("ema.inv_gamma", 1.0))
    power = float(fields.get("ema.power", 0.75))
    lo, hi = float(fields.get("ema.min_value", 0.0)), float(fields.get("ema.max_value", 0.9999))
    s = max(0, step - after - 1)
    return 0.0 if s <= 0 else max(lo, min(1 - (1 + s / inv_gamma) ** -power, hi))


# ---------------------------------------------------------------------------- report
def _group_counts(names: Sequence[str]) -> List[Tuple[str, int]]:
    counts: Dict[str, int] = {}
    for n in names:
        parts = n.split(".")
        head = ".".join(parts[:2]) if parts[0] in ("obs_encoder", "normalizer") and len(parts) > 2 else parts[0]
        if parts[0] == "model" and len(parts) > 2 and parts[1] == "blocks":
            head = "model.blocks"
        counts[head] = counts.get(head, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])


def format_summary(report: Mapping[str, Any]) -> str:
    """The human summary printed by every run (the JSON report has every name)."""
    m = report["mapping"]
    c = m["counts"]
    lines = [f"converted {report['source']}", f"       -> {report['output']}",
             f"weights: state_dicts['{report['weights']}']"
             + (f" (also in the file, not used: {', '.join(report['unused_state_dicts'])})"
                if report["unused_state_dicts"] else "")]
    run = report.get("original_run") or {}
    if run:
        lines.append(f"original run: epoch {run.get('epoch')}, global_step {run.get('global_step')}")
    p = report["preset"]
    lines.append(f"preset: {p['name']} ({p['chosen_by']})")
    for title, items in (("config overrides from the file's cfg", report["cfg_overrides"]),
                         ("config overrides given with --override", report["user_overrides"])):
        lines.append(f"{title}: " + (" ".join(items) if items else "none"))
    total = sum(c.values())
    lines.append(f"tensors in the file: {total} -> kept {c['kept']}, renamed {c['renamed']}, "
                 f"resampled {c['resampled']}, truncated {c['truncated']}, dropped {c['dropped']}")
    lines.append("  kept: " + ", ".join(f"{k} {n}" for k, n in _group_counts(m["kept"])))
    for old, new in m["renamed"].items():
        lines.append(f"  renamed:   {old} -> {new}")
    for name, d in m["resampled"].items():
        lines.append(f"  resampled: {name} {d['from']} -> {d['to']} ({d['how']})")
    for name, d in m["truncated"].items():
        lines.append(f"  truncated: {name} {d['from']} -> {d['to']} ({d['how']})")
    for name, why in m["dropped"].items():
        lines.append(f"  dropped:   {name}: {why}")
    ts = report.get("training_state")
    if ts is None:
        lines.append("training state: not carried (pass --with-optimizer to resume the original run)")
    else:
        opt = ts["optimizer"]
        lines.append(f"training state: epoch {ts['epoch']}, global_step {ts['global_step']} "
                     f"({ts['global_step_source']}); optimizer: {opt['status']}")
        if opt.get("reason"):
            lines.append(f"  why: {opt['reason']}")
        if ts.get("note"):
            lines.append(f"  note: {ts['note']}")
        if ts.get("ema"):
            lines.append(f"  EMA: {ts['ema']}")
        lines.append(f"  LR scheduler: {ts['lr_scheduler']}; RNG: {ts['rng']}")
        if ts.get("train_overrides"):
            lines.append("  resume with the original's schedule: python train.py "
                         + " ".join(report["compose_overrides"] + ts["train_overrides"])
                         + f" training.resume_from={report['output']} task.dataset_paths=[...]")
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    lines.append(f"report: {report['report_path']}")
    return "\n".join(lines)
