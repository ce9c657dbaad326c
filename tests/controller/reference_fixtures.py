"""Checkpoints laid out exactly as the original DexGraspVLA code writes them -- built here, from
what its source says, never from our own policy's keys.

What the original (github.com/Psi-Robot/DexGraspVLA) writes, and where it says so:

* ``controller/workspace/base_workspace.py`` ``BaseWorkspace.save_checkpoint``:
  ``torch.save({'cfg': OmegaConf, 'state_dicts': {...}, 'pickles': {...}}, f, pickle_module=dill)``.
  ``state_dicts`` holds every workspace attribute with ``state_dict``/``load_state_dict``:
  ``model``, ``ema_model`` (only with ``training.use_ema``; otherwise the attribute is None) and
  ``optimizer`` (only with ``training.resume``: otherwise the workspace sets
  ``exclude_keys=['optimizer']``). With the default ``use_thread=True`` each state dict is first
  copied by ``_copy_to_cpu`` into plain ``dict`` / ``list`` containers (insertion order kept).
  ``pickles`` holds ``dill.dumps`` bytes of ``global_step``, ``epoch`` (the training workspace's
  ``include_keys``) and ``_output_dir`` (None).
* ``controller/model/common/module_attr_mixin.py``: ``ModuleAttrMixin.__init__`` registers
  ``self._dummy_variable = nn.Parameter(requires_grad=False)``, an empty float32 tensor of shape
  (0,). The policy (via ``BaseImagePolicy``), ``ObsEncoder`` and ``TransformerForActionDiffusion``
  derive from it, so every checkpoint has ``_dummy_variable``, ``obs_encoder._dummy_variable`` and
  ``model._dummy_variable`` -- each first in its module, before its children.
* ``controller/policy/dexgraspvla_controller.py``: submodules in registration order
  ``obs_encoder``, ``model``, ``normalizer``.
* ``controller/model/vision/obs_encoder.py``: ``dino_head`` and ``dino_wrist`` come from
  ``torch.hub.load('facebookresearch/dinov2', model_type)`` (official layout: ``cls_token``,
  ``pos_embed`` for 518 px = 37x37+1 rows whatever the training image size, ``mask_token``,
  ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1,
  mlp.fc2, ls2.gamma}``, ``norm``); then ``mask_process_net`` (``patch_embed``: Conv2d, Flatten,
  Rearrange, LayerNorm; ``transformer``: ``nn.TransformerEncoder`` of 4 pre-norm layers, 8 heads,
  4x feed-forward), ``head_net``, ``wrist_net``, ``state_net`` (Linear, LayerNorm, GELU, Dropout,
  Linear, LayerNorm). ``output_shape()`` is hard-coded to 2739 tokens.
* ``controller/model/diffusion/transformer_for_action_diffusion.py``: own parameters
  ``pos_emb`` (1, horizon, D), ``cond_pos_emb`` (1, 2739+1, D); children ``input_emb``,
  ``time_emb.mlp.{0,2}``, ``blocks.N.{norm1, attn (timm Attention: qkv, q_norm, k_norm, proj),
  cross_attn (masks/probs buffers when use_attn_mask, then q, kv, q_norm, k_norm, proj), norm2,
  ffn (timm Mlp: fc1, fc2), norm3}``, ``ln_f``, ``head``. RMSNorms hold ``weight`` only.
* ``controller/model/common/normalizer.py``: ``normalizer.params_dict.<field>.{scale, offset,
  input_stats.{min,max,mean,std}}``; the dataset fits ``action`` and ``right_state``.
* ``DexGraspVLAController.get_optimizer``: AdamW over the parameters that require grad, in
  ``named_parameters()`` order, two groups: >=2-D tensors (weight decay) then the rest (0.0).
  The dummies and DINOv2 weights are frozen, the normaliser is set after the optimizer is built.

Run as a script to write one such file (used for the user-facing report in
docs/reference_checkpoints.md)::

    python -m tests.controller.reference_fixtures OUT.ckpt [--ema] [--optimizer]
"""
from __future__ import annotations

import argparse
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from omegaconf import OmegaConf

DUMMY_KEYS = ("_dummy_variable", "obs_encoder._dummy_variable", "model._dummy_variable")
ORIGINAL_COND_TOKENS = 2739 + 1   # ObsEncoder.output_shape() is hard-coded; + 1 time token
PATCH = 14


@dataclass
class OriginalSpec:
    """Sizes of an original-layout model. Defaults: a tiny one that converts in a second."""
    image_size: int = 56             # task.image_shape[-1]
    dino_depth: int = 2              # a DINOv2-shaped ViT, 2 blocks ...
    dino_width: int = 64             # ... 64 wide (the official hub ones are 384..1536)
    dino_pos_grid: int = 37          # official hub models are built for 518 px: 37x37 patches
    model_type: str = "dinov2_vits14"  # what the cfg names (the closest official architecture)
    n_layer: int = 2
    n_head: int = 8
    num_inference_steps: int = 4
    use_attn_mask: bool = False
    horizon: int = 64
    action_dim: int = 13
    state_dim: int = 13
    state_hidden: int = 256
    mask_layers: int = 4
    epoch: int = 2                   # the original pickles the epoch it just finished ...
    global_step: int = 5             # ... and its batch counter before counting that epoch's last batch
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:      # max(head, wrist) in the original
        return self.dino_width

    @property
    def grid(self) -> int:
        return self.image_size // PATCH

    def converter_overrides(self) -> List[str]:
        """What a user must tell the converter about a backbone the cfg cannot describe (the
        original's cfg only names a hub model; these tiny ViTs are not one)."""
        out = []
        for cam in ("head", "wrist"):
            out += [f"+policy.obs_encoder.{cam}.depth={self.dino_depth}",
                    f"+policy.obs_encoder.{cam}.embed_dim={self.dino_width}",
                    f"+policy.obs_encoder.{cam}.num_heads={max(1, self.dino_width // 64)}"]
        return out + [f"policy.obs_encoder.feature_dim={self.feature_dim}"]


class _Filler:
    """Deterministic random tensors of plausible scale for each kind of parameter."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, *shape, std=0.02, mean=0.0):
        return torch.randn(*shape, generator=self.g) * std + mean

    def linear(self, sd, name, n_out, n_in, bias=True, std=None):
        sd[f"{name}.weight"] = self.normal(n_out, n_in, std=std or 1.0 / math.sqrt(n_in))
        if bias:
            sd[f"{name}.bias"] = self.normal(n_out, std=0.02)

    def norm(self, sd, name, dim, bias=True):
        sd[f"{name}.weight"] = self.normal(dim, std=0.05, mean=1.0)
        if bias:
            sd[f"{name}.bias"] = self.normal(dim, std=0.02)


def _dinov2(sd, f: _Filler, prefix: str, spec: OriginalSpec) -> None:
    """Official DINOv2 hub-model state dict (block_chunks=0, no registers), its key order."""
    d = spec.dino_width
    sd[prefix + "cls_token"] = f.normal(1, 1, d)
    sd[prefix + "pos_embed"] = f.normal(1, spec.dino_pos_grid ** 2 + 1, d)
    sd[prefix + "mask_token"] = torch.zeros(1, d)
    sd[prefix + "patch_embed.proj.weight"] = f.normal(d, 3, PATCH, PATCH, std=0.05)
    sd[prefix + "patch_embed.proj.bias"] = f.normal(d)
    for i in range(spec.dino_depth):
        b = f"{prefix}blocks.{i}."
        f.norm(sd, b + "norm1", d)
        f.linear(sd, b + "attn.qkv", 3 * d, d)
        f.linear(sd, b + "attn.proj", d, d)
        sd[b + "ls1.gamma"] = f.normal(d, std=0.05, mean=0.3)
        f.norm(sd, b + "norm2", d)
        f.linear(sd, b + "mlp.fc1", 4 * d, d)
        f.linear(sd, b + "mlp.fc2", d, 4 * d)
        sd[b + "ls2.gamma"] = f.normal(d, std=0.05, mean=0.3)
    f.norm(sd, prefix + "norm", d)


def _fusion(sd, f: _Filler, prefix: str, n_in: int, hidden: int, n_out: int) -> None:
    f.linear(sd, prefix + "0", hidden, n_in)
    f.norm(sd, prefix + "1", hidden)
    f.linear(sd, prefix + "4", n_out, hidden)
    f.norm(sd, prefix + "5", n_out)


def original_model_state_dict(spec: OriginalSpec = OriginalSpec(), seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """``DexGraspVLAController.state_dict()`` of the original code, in its order, random values."""
    f = _Filler(seed)
    sd: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    D, hd = spec.feature_dim, spec.dino_width
    sd["_dummy_variable"] = torch.empty(0)
    # ---- obs_encoder
    sd["obs_encoder._dummy_variable"] = torch.empty(0)
    _dinov2(sd, f, "obs_encoder.dino_head.", spec)
    _dinov2(sd, f, "obs_encoder.dino_wrist.", spec)
    sd["obs_encoder.mask_process_net.patch_embed.0.weight"] = f.normal(hd, 1, PATCH, PATCH, std=0.05)
    sd["obs_encoder.mask_process_net.patch_embed.0.bias"] = f.normal(hd)
    f.norm(sd, "obs_encoder.mask_process_net.patch_embed.3", hd)
    for i in range(spec.mask_layers):
        p = f"obs_encoder.mask_process_net.transformer.layers.{i}."
        sd[p + "self_attn.in_proj_weight"] = f.normal(3 * hd, hd, std=1.0 / math.sqrt(hd))
        sd[p + "self_attn.in_proj_bias"] = f.normal(3 * hd)
        f.linear(sd, p + "self_attn.out_proj", hd, hd)
        f.linear(sd, p + "linear1", 4 * hd, hd)
        f.linear(sd, p + "linear2", hd, 4 * hd)
        f.norm(sd, p + "norm1", hd)
        f.norm(sd, p + "norm2", hd)
    _fusion(sd, f, "obs_encoder.head_net.", 2 * hd, D, D)
    _fusion(sd, f, "obs_encoder.wrist_net.", hd, D, D)
    _fusion(sd, f, "obs_encoder.state_net.", spec.state_dim, spec.state_hidden, D)
    # ---- model (the DiT): own parameters first, then children
    sd["model._dummy_variable"] = torch.empty(0)
    sd["model.pos_emb"] = f.normal(1, spec.horizon, D)
    sd["model.cond_pos_emb"] = f.normal(1, ORIGINAL_COND_TOKENS, D)
    f.linear(sd, "model.input_emb", D, spec.action_dim)
    f.linear(sd, "model.time_emb.mlp.0", D, 256)
    f.linear(sd, "model.time_emb.mlp.2", D, D)
    for i in range(spec.n_layer):
        b = f"model.blocks.{i}."
        f.norm(sd, b + "norm1", D, bias=False)
        f.linear(sd, b + "attn.qkv", 3 * D, D)
        f.norm(sd, b + "attn.q_norm", D // spec.n_head, bias=False)
        f.norm(sd, b + "attn.k_norm", D // spec.n_head, bias=False)
        f.linear(sd, b + "attn.proj", D, D)
        if spec.use_attn_mask:  # CrossAttention's own buffers precede its child layers
            masks = torch.ones(4, spec.horizon, ORIGINAL_COND_TOKENS, dtype=torch.bool)
            masks[0, :, :1369] = False
            masks[1, :, 1369:2738] = False
            masks[2, :, :2738] = False
            sd[b + "cross_attn.masks"] = masks
            sd[b + "cross_attn.probs"] = torch.tensor([0.1, 0.1, 0.1, 0.7])
        f.linear(sd, b + "cross_attn.q", D, D)
        f.linear(sd, b + "cross_attn.kv", 2 * D, D)
        f.norm(sd, b + "cross_attn.q_norm", D // spec.n_head, bias=False)
        f.norm(sd, b + "cross_attn.k_norm", D // spec.n_head, bias=False)
        f.linear(sd, b + "cross_attn.proj", D, D)
        f.norm(sd, b + "norm2", D, bias=False)
        f.linear(sd, b + "ffn.fc1", D, D)
        f.linear(sd, b + "ffn.fc2", D, D)
        f.norm(sd, b + "norm3", D, bias=False)
    f.norm(sd, "model.ln_f", D, bias=False)
    f.linear(sd, "model.head", spec.action_dim, D)
    # ---- normalizer (fitted on action and right_state, 'limits' mode)
    for fld, dim in (("action", spec.action_dim), ("right_state", spec.state_dim)):
        lo = f.normal(dim, std=0.3) - 1.0
        hi = lo + 0.5 + torch.rand(dim, generator=f.g)
        scale = 2.0 / (hi - lo)
        p = f"normalizer.params_dict.{fld}."
        sd[p + "scale"] = scale
        sd[p + "offset"] = -1.0 - scale * lo
        sd[p + "input_stats.min"] = lo
        sd[p + "input_stats.max"] = hi
        sd[p + "input_stats.mean"] = (lo + hi) / 2
        sd[p + "input_stats.std"] = (hi - lo) / 4
    return sd


def original_trainable_names(sd: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the parameters the original's optimizer holds, in its order (see module doc)."""
    frozen = ("obs_encoder.dino_head.", "obs_encoder.dino_wrist.", "normalizer.")
    return [k for k in sd if not k.endswith("_dummy_variable") and not k.startswith(frozen)
            and not k.endswith((".cross_attn.masks", ".cross_attn.probs"))]


def original_optimizer(sd: Dict[str, torch.Tensor], steps: int = 3, lr: float = 1e-4, weight_decay: float = 1e-4,
                       betas=(0.95, 0.999), seed: int = 1):
    """AdamW built like the original's ``get_optimizer`` over copies of ``sd``'s trainable tensors
    and stepped ``steps`` times with random gradients under a warm-up LambdaLR (which sets the
    groups' ``initial_lr``). Returns ``(optimizer, {name: parameter})`` -- the parameters carry the
    stepped values, so a test can keep training "the original" side by side with ours."""
    names = original_trainable_names(sd)
    params = {n: torch.nn.Parameter(sd[n].detach().clone().float()) for n in names}
    decay = [params[n] for n in names if params[n].dim() >= 2]
    nodecay = [params[n] for n in names if params[n].dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": nodecay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)  # the original passes fused=True
    except (RuntimeError, ValueError):
        opt = torch.optim.AdamW(groups, lr=lr, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=g) * 1e-2
        opt.step()
        opt.zero_grad()
        sched.step()
    return opt, params


def original_cfg(spec: OriginalSpec = OriginalSpec(), use_ema: bool = False, resume: bool = False):
    """The original's composed Hydra config (train_dexgraspvla_controller_workspace.yaml with
    task=grasp), interpolations left as written -- including ``${eval:...}``, whose resolver the
    original registers and a converter must never evaluate."""
    s = spec
    text = f"""
name: train_dexgraspvla_controller
_target_: controller.workspace.train_dexgraspvla_controller_workspace.TrainDexGraspVLAControllerWorkspace
task_name: ${{task.name}}
shape_meta: ${{task.shape_meta}}
exp_name: default
n_action_steps: {s.horizon}
n_obs_steps: 1
n_latency_steps: 0
dataset_obs_steps: ${{n_obs_steps}}
past_action_visible: false
keypoint_visible_rate: 1.0
obs_as_cond: true
policy:
  _target_: controller.policy.dexgraspvla_controller.DexGraspVLAController
  shape_meta: ${{shape_meta}}
  noise_scheduler:
    _target_: diffusers.DDIMScheduler
    num_train_timesteps: 50
    beta_start: 0.0001
    beta_end: 0.02
    beta_schedule: squaredcos_cap_v2
    clip_sample: true
    set_alpha_to_one: true
    steps_offset: 0
    prediction_type: epsilon
  obs_encoder:
    _target_: controller.model.vision.obs_encoder.ObsEncoder
    shape_meta: ${{shape_meta}}
    model_config:
      head: {{model_type: {s.model_type}, local_weights_path: null}}
      wrist: {{model_type: {s.model_type}, local_weights_path: null}}
  num_inference_steps: {s.num_inference_steps}
  n_layer: {s.n_layer}
  n_head: {s.n_head}
  p_drop_attn: 0.1
  use_attn_mask: {str(s.use_attn_mask).lower()}
  start_ckpt_path: null
ema: {{_target_: controller.model.diffusion.ema_model.EMAModel, update_after_step: 0, inv_gamma: 1.0,
      power: 0.75, min_value: 0.0, max_value: 0.9999}}
dataloader: {{batch_size: 48, num_workers: 8, shuffle: true, pin_memory: true, persistent_workers: true}}
val_dataloader: {{batch_size: 48, num_workers: 8, shuffle: false, pin_memory: true, persistent_workers: true}}
optimizer: {{lr: 1.0e-4, weight_decay: 1e-4, betas: [0.95, 0.999]}}
training:
  device: cuda:0
  seed: 42
  debug: false
  resume: {str(resume).lower()}
  lr_scheduler: cosine
  lr_warmup_steps: 2000
  num_epochs: 125
  gradient_accumulate_every: 1
  use_ema: {str(use_ema).lower()}
  rollout_every: 10
  checkpoint_every: 1
  val_every: 10000
  sample_every: 10
  gen_attn_map: true
  max_train_steps: null
  max_val_steps: null
  tqdm_interval_sec: 1.0
logging: {{project: train_dexgraspvla_controller, resume: false, mode: online,
          name: "${{now:%Y.%m.%d-%H.%M}}_${{name}}_${{task_name}}", id: null, group: null}}
checkpoint:
  topk: {{monitor_key: train_loss, mode: min, k: 1, format_str: "epoch={{epoch:04d}}-train_loss={{train_loss:.3f}}.ckpt"}}
  save_last_ckpt: false
  save_last_snapshot: false
task:
  name: grasp
  image_shape: [3, {s.image_size}, {s.image_size}]
  mask_image_shape: [4, {s.image_size}, {s.image_size}]
  dataset_paths: [data/grasp_demo_example]
  shape_meta:
    obs:
      right_cam_img: {{shape: "${{task.image_shape}}", type: rgb, horizon: "${{n_obs_steps}}"}}
      rgbm: {{shape: "${{task.mask_image_shape}}", type: rgbm, horizon: "${{n_obs_steps}}"}}
      right_state: {{shape: [{s.state_dim}], type: low_dim, horizon: "${{n_obs_steps}}"}}
    action: {{shape: [{s.action_dim}], horizon: "${{n_action_steps}}"}}
  env_runner: {{_target_: controller.env_runner.real_grasp_image_runner.RealGraspImageRunner}}
  dataset:
    _target_: controller.dataset.mask_image_dataset.MaskImageDataset
    zarr_paths: ${{task.dataset_paths}}
    horizon: ${{n_action_steps}}
    pad_before: "${{eval:'${{n_obs_steps}}-1+${{n_latency_steps}}'}}"
    pad_after: "${{eval:'${{n_action_steps}}-1'}}"
    seed: 42
    val_ratio: 0
"""
    cfg = OmegaConf.create(text)
    for key, value in spec.extra.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def write_original_checkpoint(path, spec: OriginalSpec = OriginalSpec(), seed: int = 0, ema: bool = False,
                              optimizer: bool = False, optimizer_steps: Optional[int] = None,
                              extra_tensors: Optional[Dict[str, torch.Tensor]] = None,
                              drop_keys: Tuple[str, ...] = (), cfg=None) -> Dict[str, object]:
    """Write ``path`` as the original's ``save_checkpoint`` does (dill, plain-dict state dicts).

    Returns what the test needs to check the conversion: ``model`` / ``ema_model`` state dicts,
    and with ``optimizer`` the original AdamW (``opt``) and its parameters by name (``params``),
    stepped ``optimizer_steps`` times (default ``global_step + 1``: one step per batch); the saved
    model weights are the stepped ones, as in a real run."""
    import dill

    model = original_model_state_dict(spec, seed)
    opt = None
    if optimizer:
        steps = spec.global_step + 1 if optimizer_steps is None else optimizer_steps
        opt, params = original_optimizer(model, steps=steps)
        for name, p in params.items():
            model[name] = p.detach().clone()
    for k in drop_keys:
        model.pop(k)
    model.update(extra_tensors or {})
    state_dicts: Dict[str, object] = {"model": dict(model)}
    out: Dict[str, object] = {"model": model}
    if ema:
        ema_sd = original_model_state_dict(spec, seed + 100)  # a different (averaged) set of values
        for k in list(ema_sd):
            if k.startswith(("obs_encoder.dino_", "normalizer.")) or k.endswith("_dummy_variable"):
                ema_sd[k] = model[k].clone()  # frozen and non-trainable tensors are not averaged
        state_dicts["ema_model"] = dict(ema_sd)
        out["ema_model"] = ema_sd
    if opt is not None:
        osd = opt.state_dict()
        state_dicts["optimizer"] = {"state": {i: dict(s) for i, s in osd["state"].items()},
                                    "param_groups": [dict(g) for g in osd["param_groups"]]}
        out.update(opt=opt, params=params)
    payload = {
        "cfg": cfg if cfg is not None else original_cfg(spec, use_ema=ema, resume=optimizer),
        "state_dicts": state_dicts,
        "pickles": {"global_step": dill.dumps(spec.global_step), "epoch": dill.dumps(spec.epoch),
                    "_output_dir": dill.dumps(None)},
    }
    with open(path, "wb") as fh:
        torch.save(payload, fh, pickle_module=dill)
    return out


def dinov2_runtime_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """What the official DINOv2 ``interpolate_pos_encoding`` adds to a ``grid`` x ``grid`` square
    image's tokens (bicubic, scale factor (grid + 0.1) / M, no antialiasing) -- written here from
    its description, independently of the converter, for the tests' direct computation."""
    cls_pe, patch_pe = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    m = int(round(math.sqrt(patch_pe.shape[1])))
    if m == grid:
        return pos_embed
    img = patch_pe.reshape(1, m, m, -1).permute(0, 3, 1, 2)
    scale = (grid + 0.1) / m
    img = torch.nn.functional.interpolate(img, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    return torch.cat([cls_pe, img.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1).to(pos_embed.dtype)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="write an original-layout DexGraspVLA checkpoint (tiny model)")
    ap.add_argument("out")
    ap.add_argument("--ema", action="store_true", help="also ema_model (the run had training.use_ema=true)")
    ap.add_argument("--optimizer", action="store_true", help="also the optimizer (training.resume=true)")
    args = ap.parse_args(argv)
    write_original_checkpoint(args.out, ema=args.ema, optimizer=args.optimizer)
    spec = OriginalSpec()
    print(f"wrote {args.out}; convert with the backbone overrides: {' '.join(spec.converter_overrides())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
