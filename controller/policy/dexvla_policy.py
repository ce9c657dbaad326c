"""DexVLA as a policy of this project: Qwen2-VL backbone + ScaleDP diffusion action expert.

Entry points (same contract as :class:`controller.policy.dexgraspvla_controller.DexGraspVLAController`
where they overlap: ``shape_meta`` checked at construction and on every call, ``LinearNormalizer``
on the actions, ``set_normalizer``, ``get_optimizer``, safetensors checkpoints):

* :meth:`DexVLAPolicy.predict_action` -- observation dict -> ``{'action': (B, H, A) unnormalised,
  'reasoning': B strings}``;
* :meth:`DexVLAPolicy.compute_loss` -- batch -> diffusion loss + ``reasoning_loss_weight`` x LM loss
  on ``batch['reasoning']`` (when present).

Observation dict (``controller.common.shape_meta``)::

    rgbm          (B, T, 4, h, w) float: head camera BGR in [0, 1] + target mask (the mask is NOT used:
                                  DexVLA gets no mask)
    right_cam_img (B, T, 3, h, w) float: wrist camera BGR in [0, 1]
    right_state   (B, T, S)       float: robot state (last step used, as the existing policy gets it)
    language      list of B str   instruction (or ``batch['language']`` / the ``language=`` argument)

Condition of the expert (stages 2/3, the reference's ``film_forward``)::

    p    = mean of the prompt hidden states over the non-padded prompt tokens    # (B, D)
    c    = prompt_proj(p)                                    # Linear -> GELU -> Linear   (B, D)
    c    = FiLM(c, projector(mean of the reasoning-token hidden states))         # (B, D)
    cond = c + p                                             # the reference's "identity" residual

Stage 1 (``training_stage: 1``) trains the expert alone, without the VLM. The public DexVLA code has
no stage-1 training code (only the released ScaleDP weights), so what the expert was conditioned on
there cannot be read from it. Here ``cond`` (B, D) comes from a small learned CNN over the head and
wrist images (``stage1_condition: encoder``) or is zero (``zeros``: state-only). Its width D is the
backbone's hidden size, so the expert's weights carry over to stage 2; the encoder does not.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from controller.common.registry import register_target
from controller.common.shape_meta import (action_dim_of, action_horizon_of, check_model_obs,
                                          state_dim_of, validate_shape_meta)
from controller.model.common.normalizer import LinearNormalizer
from controller.model.dexvla.backbone import PRESETS as BACKBONE_PRESETS
from controller.model.dexvla.backbone import DexVLABackbone
from controller.model.scaledp import HEADS, ScaleDPConfig, ScaleDPExpert, UNetConfig, masked_mean

logger = logging.getLogger(__name__)

EXPERT_SIZE_KEYS = ("depth", "width", "num_heads", "mlp_ratio", "combine_hidden", "frequency_dim")
EXPERT_DIFFUSION_KEYS = ("prediction_type", "num_train_timesteps", "num_inference_steps", "beta_schedule",
                         "clip_sample", "use_reasoning_film")
UNET_SIZE_KEYS = ("down_dims", "kernel_size", "n_groups", "step_embed_dim", "obs_embed_dim", "frequency_dim")


def build_expert(spec: Mapping[str, Any], **dims: int) -> ScaleDPExpert:
    """The action expert of ``policy.expert`` (``head: scaledp | unet``); ``dims`` = action_dim,
    horizon, cond_dim, state_dim. ScaleDP sizes are top-level keys (``size`` or depth/width/...);
    UNet sizes live under ``unet:`` (:class:`UNetConfig`). The other head's keys are ignored."""
    exp = dict(spec or {})
    head = exp.pop("head", "scaledp")
    if head not in HEADS:
        raise ValueError(f"policy.expert.head must be one of {sorted(HEADS)}, got {head!r}")
    unet = dict(exp.pop("unet", None) or {})
    unknown = set(exp) - set(EXPERT_SIZE_KEYS) - set(EXPERT_DIFFUSION_KEYS) - {"size"}
    if unknown:
        raise ValueError(f"policy.expert: unknown keys {sorted(unknown)}")
    if head == "unet":
        bad = set(unet) - set(UNET_SIZE_KEYS)
        if bad:
            raise ValueError(f"policy.expert.unet: unknown keys {sorted(bad)}")
        cfg = UNetConfig(**dims, **unet)
    else:
        sizes = dict(dims, **{k: exp[k] for k in EXPERT_SIZE_KEYS if k in exp})
        cfg = ScaleDPConfig.preset(exp["size"], **sizes) if "size" in exp else ScaleDPConfig(**sizes)
    return ScaleDPExpert(cfg, **{k: exp[k] for k in EXPERT_DIFFUSION_KEYS if k in exp})


def backbone_hidden_size(spec: Mapping[str, Any]) -> int:
    """Hidden size D of the backbone a spec describes, without building it (stage 1)."""
    if spec.get("model_path"):
        import transformers
        cfg = transformers.AutoConfig.from_pretrained(str(spec["model_path"]), local_files_only=True)
        return int(getattr(cfg, "text_config", cfg).hidden_size)
    sizes = {**BACKBONE_PRESETS[spec.get("preset", "tiny")], **dict(spec.get("config") or {})}
    return int(sizes["hidden_size"])


def _small_cnn(channels: Sequence[int]) -> nn.Sequential:
    """(B, 3, H, W) -> (B, channels[-1]): strided convs with GELU, then global average pooling."""
    layers: List[nn.Module] = []
    c_in = 3
    for i, c in enumerate(channels):
        k = 5 if i == 0 else 3
        layers += [nn.Conv2d(c_in, c, k, stride=2, padding=k // 2), nn.GELU()]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Stage1Encoder(nn.Module):
    """Stage-1 condition: a small CNN per view (head, wrist) -> pooled features -> Linear -> (B, D).

    images: (B, V, 3, H, W) float in [0, 1] -> (B, cond_dim).
    """

    def __init__(self, cond_dim: int, num_views: int, channels: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        self.views = nn.ModuleList([_small_cnn(channels) for _ in range(num_views)])
        self.proj = nn.Linear(num_views * int(channels[-1]), cond_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = [net(images[:, v].float() * 2 - 1) for v, net in enumerate(self.views)]  # V x (B, C)
        return self.proj(torch.cat(feats, dim=-1))                                        # (B, D)


class DexVLAPolicy(nn.Module):
    """DexVLA policy (VLM + projector + ScaleDP expert, or the expert alone in stage 1).

    Args:
        shape_meta: the data contract (checked here and on every call).
        backbone: :class:`DexVLABackbone` arguments (``model_path`` or ``preset``/``config``,
            ``freeze_vision``, ``max_reasoning_tokens``, ``seed``, ``dtype``).
        expert: ``head``: ``scaledp`` (default) or ``unet`` (1-D conditional UNet, sizes under
            ``unet:``, see :func:`build_expert`); ScaleDP size (``size``: S/B/L/H, or
            ``depth``/``width``/``num_heads``; optional ``mlp_ratio``, ``combine_hidden``) and
            diffusion settings (``prediction_type``, ``num_train_timesteps``, ``num_inference_steps``,
            ``beta_schedule``, ``clip_sample``, ``use_reasoning_film``).
        training_stage: 1 = expert alone (no VLM); 2 / 3 = VLM + projector + expert (same network;
            stage 3 starts from a stage-2 checkpoint).
        reasoning_loss_weight: weight of the LM loss (the reference's ``llm_loss_weight``).
        use_reasoning: generate reasoning at inference, train the LM on it and FiLM the condition
            (False: prompt hidden states only, no LM loss).
        use_wrist_camera: give the wrist view to the VLM / stage-1 encoder (views: head, wrist).
        stage1_condition: ``"encoder"`` (learned CNN) or ``"zeros"``.
        stage1_channels: CNN widths of the stage-1 encoder.
        default_instruction: instruction used when the observation carries none.
        lora_rank: > 0: LoRA (peft) on the language model's projections in stages 2/3; its base
            weights are then frozen (:mod:`controller.policy.dexvla_lora`; ignored in stage 1).
        lora_alpha: LoRA scale numerator (scale = ``lora_alpha / lora_rank``).
        lora_dropout: dropout on the LoRA input (training only).
        lora_target_modules: projection names inside the LM decoder layers (default: q/k/v/o and
            gate/up/down); the vision tower is never adapted.
        start_ckpt_path: weights to start from (consumed by the workspace, kept for the config).
        init_from: stage chaining (:mod:`controller.policy.dexvla_init`): a checkpoint directory (or a
            converted ScaleDP expert ``.safetensors``) whose weights are copied in at construction;
            the report is kept in ``self.init_report`` and printed.
        init_from_mode: ``auto`` | ``full`` (strict, stage 2 -> 3) | ``expert`` (``expert.*`` only,
            stage 1 -> 2; every key not loaded is reported).
        gradient_checkpointing: recompute the ScaleDP blocks' and the Qwen2-VL layers' activations
            in backward (training only; same gradients, less memory: the 2B presets on GPUs).
    """

    def __init__(self, shape_meta: Mapping, backbone: Optional[Mapping[str, Any]] = None,
                 expert: Optional[Mapping[str, Any]] = None, training_stage: int = 2,
                 reasoning_loss_weight: float = 1.0, use_reasoning: bool = True, use_wrist_camera: bool = True,
                 stage1_condition: str = "encoder", stage1_channels: Sequence[int] = (16, 32, 64),
                 default_instruction: str = "", lora_rank: int = 0, lora_alpha: float = 16.0,
                 lora_dropout: float = 0.05, lora_target_modules: Optional[Sequence[str]] = None,
                 start_ckpt_path: Optional[str] = None, init_from: Optional[str] = None,
                 init_from_mode: str = "auto", gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.shape_meta = validate_shape_meta(shape_meta, "policy.shape_meta")
        self.action_dim = action_dim_of(self.shape_meta)
        self.action_horizon = action_horizon_of(self.shape_meta)
        self.state_dim = state_dim_of(self.shape_meta)
        if training_stage not in (1, 2, 3):
            raise ValueError(f"training_stage must be 1, 2 or 3, got {training_stage!r}")
        if stage1_condition not in ("encoder", "zeros"):
            raise ValueError(f"stage1_condition must be 'encoder' or 'zeros', got {stage1_condition!r}")
        if int(lora_rank) < 0:
            raise ValueError(f"lora_rank must be >= 0, got {lora_rank!r}")
        self.training_stage = int(training_stage)
        self.reasoning_loss_weight = float(reasoning_loss_weight)
        self.use_reasoning = bool(use_reasoning)
        self.num_views = 2 if use_wrist_camera else 1
        self.stage1_condition = stage1_condition
        self.default_instruction = str(default_instruction)
        self.start_ckpt_path = start_ckpt_path
        spec = dict(backbone or {})
        if self.training_stage == 1:
            self.backbone = None
            cond_dim = backbone_hidden_size(spec)
            self.stage1_encoder = (Stage1Encoder(cond_dim, self.num_views, stage1_channels)
                                   if stage1_condition == "encoder" else None)
        else:
            self.backbone = DexVLABackbone(**spec)
            cond_dim = self.backbone.hidden_size
            # the reference's input_action_proj (mean-pooled prompt states -> Linear, GELU, Linear)
            self.prompt_proj = nn.Sequential(nn.Linear(cond_dim, cond_dim), nn.GELU(), nn.Linear(cond_dim, cond_dim))
        self.lora_rank = int(lora_rank) if self.backbone is not None else 0
        self.lora_alpha = float(lora_alpha)
        if self.lora_rank:  # peft LoRA in the LM, its base weights frozen (controller/policy/dexvla_lora.py)
            from controller.policy.dexvla_lora import apply_lora
            apply_lora(self.backbone.model, self.lora_rank, self.lora_alpha, lora_dropout, lora_target_modules,
                       seed=int(spec.get("seed", 0)))
        elif lora_rank and self.training_stage == 1:
            logger.info("lora_rank=%s ignored in stage 1 (no language model)", lora_rank)
        self.cond_dim = cond_dim
        self.expert = build_expert(expert or {}, action_dim=self.action_dim, horizon=self.action_horizon,
                                   cond_dim=cond_dim, state_dim=self.state_dim)
        if gradient_checkpointing:  # activations recomputed in backward: the 2B presets on GPUs
            self.expert.model.gradient_checkpointing = True
            if self.backbone is not None:
                model = self.backbone.model  # transformers >= 5 renamed the switch; 4.x has the old name only
                if hasattr(model, "activation_checkpointing_enable"):
                    model.activation_checkpointing_enable({"use_reentrant": False})
                else:
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.normalizer = LinearNormalizer()
        self.init_report = None
        if init_from:  # stage chaining: weights of another stage (controller/policy/dexvla_init.py)
            from controller.policy.dexvla_init import format_init_report, load_init_weights
            self.init_report = load_init_weights(self, str(init_from), init_from_mode)
            print(format_init_report(self.init_report), flush=True)

    # ------------------------------------------------------------------ info
    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.expert.parameters()).dtype

    def set_normalizer(self, normalizer: LinearNormalizer) -> None:
        """Copy a fitted normaliser (from the dataset) into the policy."""
        self.normalizer.load_state_dict(normalizer.state_dict())

    # ------------------------------------------------------------------ inputs
    def images(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """Last-step views as RGB: (B, V, 3, h, w), V = head (+ wrist). The rgbm mask is dropped."""
        if "rgbm" not in obs or obs["rgbm"].shape[2] != 4:
            raise ValueError("DexVLA needs raw images: obs['rgbm'] (B, T, 4, h, w) (feature caches are not supported)")
        views = [obs["rgbm"][:, -1, :3]]                                   # (B, 3, h, w) BGR
        if self.num_views == 2:
            views.append(obs["right_cam_img"][:, -1])                      # (B, 3, h, w) BGR
        return torch.stack(views, dim=1).flip(2)                           # (B, V, 3, h, w) RGB

    def instructions(self, B: int, *sources: Any) -> List[str]:
        """The first list of B strings among ``sources`` (else the default instruction)."""
        for src in sources:
            if src is not None:
                texts = [src] * B if isinstance(src, str) else [str(t) for t in src]
                if len(texts) != B:
                    raise ValueError(f"{len(texts)} instructions for a batch of {B}")
                return texts
        return [self.default_instruction] * B

    def condition(self, prompt_hidden: torch.Tensor, prompt_mask: torch.Tensor,
                  reasoning_hidden: Optional[torch.Tensor] = None,
                  reasoning_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """prompt (B, L, D) + mask (B, L), reasoning (B, L_r, D) + mask (B, L_r) or None -> cond (B, D)."""
        pooled, _ = masked_mean(prompt_hidden.float(), prompt_mask)        # (B, D)
        cond = self.prompt_proj(pooled)                                    # (B, D)
        if reasoning_hidden is not None and self.expert.reasoning_film is not None:
            cond = self.expert.reasoning_film(cond, reasoning_hidden.float(), reasoning_mask)  # (B, D)
        return cond + pooled                                               # (B, D)

    def stage1_cond(self, obs: Mapping[str, Any], B: int) -> torch.Tensor:
        """Stage-1 condition (B, D): the learned encoder's, or zeros."""
        if self.stage1_encoder is None:
            return torch.zeros(B, self.cond_dim, device=self.device, dtype=self.dtype)
        return self.stage1_encoder(self.images(obs).to(self.device))       # (B, D)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, Any], noise: Optional[torch.Tensor] = None,
                       language: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """Observation dict -> {'action': (B, H, A) unnormalised, 'reasoning': B strings}.

        ``noise``: optional initial noise (B, H, A): deterministic output given it. Stage 1 and
        ``use_reasoning=False`` return empty reasoning strings.
        """
        B = check_model_obs(obs, self.shape_meta, "predict_action obs")
        state = obs["right_state"][:, -1].to(self.device).float()          # (B, S)
        texts = [""] * B
        if self.backbone is None:
            cond = self.stage1_cond(obs, B)                                # (B, D)
        else:
            imgs, instr = self.images(obs), self.instructions(B, language, obs.get("language"))
            if self.use_reasoning:
                out = self.backbone.generate_reasoning(imgs, instr)
                texts = out["text"]
                cond = self.condition(out["prompt_hidden"], out["prompt_mask"], out["reasoning_hidden"],
                                      out["reasoning_mask"])               # (B, D)
            else:
                out = self.backbone.encode(imgs, instr)
                cond = self.condition(out["prompt_hidden"], out["prompt_mask"])  # (B, D)
        shape = (B, self.action_horizon, self.action_dim)
        if noise is not None:
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
            noise = noise.to(device=cond.device, dtype=cond.dtype)
        naction = self.expert.sample(cond, state, noise=noise, horizon=self.action_horizon)  # (B, H, A)
        return {"action": self.normalizer["action"].unnormalize(naction), "reasoning": texts}

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Loss of a batch ``{'obs': {...}, 'action': (B, H, A), 'action_is_pad': (B, H),
        'language': B str, 'reasoning': B str}``: diffusion loss (padded steps excluded) +
        ``reasoning_loss_weight`` x LM loss on the reasoning (when present; stages 2/3).
        The two terms of the last call are kept in ``self.last_loss_terms`` (floats)."""
        obs = batch["obs"]
        B = check_model_obs(obs, self.shape_meta, "compute_loss obs")
        nactions = self.normalizer["action"].normalize(batch["action"]).float()      # (B, H, A)
        pad = batch.get("action_is_pad")
        pad = pad.bool() if pad is not None else None                                 # (B, H)
        state = obs["right_state"][:, -1].float()                                     # (B, S)
        lm_loss = None
        if self.backbone is None:
            cond = self.stage1_cond(obs, B)                                           # (B, D)
        else:
            imgs = self.images(obs)
            instr = self.instructions(B, batch.get("language"), obs.get("language"))
            reasoning = batch.get("reasoning")
            if self.use_reasoning and reasoning is not None:
                out = self.backbone.lm_forward(imgs, instr, [str(r) for r in reasoning])
                lm_loss = out["lm_loss"]
                cond = self.condition(out["prompt_hidden"], out["prompt_mask"], out["reasoning_hidden"],
                                      out["reasoning_mask"])                          # (B, D)
            else:
                out = self.backbone.encode(imgs, instr)
                cond = self.condition(out["prompt_hidden"], out["prompt_mask"])       # (B, D)
        diffusion = self.expert.compute_loss(nactions, pad, cond, state)
        loss = diffusion if lm_loss is None else diffusion + self.reasoning_loss_weight * lm_loss
        self.last_loss_terms = {"diffusion_loss": float(diffusion.detach()),
                                "lm_loss": float(lm_loss.detach()) if lm_loss is not None else float("nan")}
        return loss

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Training forward (so DDP wrappers see the loss computation)."""
        return self.compute_loss(batch)

    def get_optimizer(self, lr: float, weight_decay: float, betas=(0.95, 0.999)) -> torch.optim.Optimizer:
        """AdamW with weight decay on >= 2-D trainable tensors only (as the existing policy)."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=tuple(betas))


register_target("controller.policy.dexvla_policy.DexVLAPolicy", kind="policy")
