"""The DexGraspVLA controller: observation encoder + action DiT + DDIM, as one policy.

The policy knows nothing of hardware, planners or device names. Its two entry points:

* :meth:`DexGraspVLAController.predict_action` -- observation dict -> unnormalised action chunk
  (B, horizon, action_dim), optionally with the cross-attention maps of every denoising step.
* :meth:`DexGraspVLAController.compute_loss` -- a training batch -> scalar diffusion loss, with
  immiscible noise assignment and padded action steps excluded from the loss.

Observation dict (see ``controller.common.shape_meta``)::

    rgbm          (B, T, 4, H, W) float, head camera BGR in [0, 1] + target mask in {0, 1}
    right_cam_img (B, T, 3, H, W) float, wrist camera BGR in [0, 1]
    right_state   (B, T, 13)      float, normalised arm joints + hand
"""
from __future__ import annotations

import logging
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from controller.common.shape_meta import (action_dim_of, action_horizon_of, check_model_obs,
                                          validate_shape_meta)
from controller.model.common.normalizer import LinearNormalizer
from controller.model.diffusion.dit import TransformerForActionDiffusion
from controller.model.vision.obs_encoder import ObsEncoder

logger = logging.getLogger(__name__)


def noise_assignment(data: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Immiscible diffusion: pair each sample with a noise draw by minimum total L2 distance.

    data, noise: (B, ...) -> permutation (B,) such that ``noise[perm]`` is matched to ``data``.
    """
    from scipy.optimize import linear_sum_assignment  # training only: scipy costs ~65 MB of RSS at import

    d = torch.cdist(data.flatten(1).float(), noise.flatten(1).float())  # (B, B)
    _, cols = linear_sum_assignment(d.detach().cpu().numpy())
    return torch.as_tensor(cols, device=data.device, dtype=torch.long)


class DexGraspVLAController(nn.Module):
    """Diffusion-transformer action chunk policy.

    Args:
        shape_meta: the data contract.
        noise_scheduler: a diffusers scheduler (DDIM in the paper presets).
        obs_encoder: :class:`ObsEncoder`.
        num_inference_steps: denoising steps at inference (16).
        n_layer / n_head / p_drop_attn / mlp_ratio: DiT size.
        use_attn_mask: condition dropout in training -- drop the head tokens, the wrist tokens or
            both, each with probability ``cond_drop_probs[i]`` per sample.
        immiscible_noise: match noise to the batch by linear assignment before noising.
        mask_padded_actions: exclude padded action steps (``action_is_pad``) from the loss.
        cache_condition_kv: reuse the condition's cross-attention K/V across denoising steps.
        fused_attention: fused SDPA in every attention layer that offers the choice (DiT and DINOv2
            backbones); False materialises the attention weights (the straightforward path the
            speed benchmark compares against; same outputs up to float rounding).
        onednn_linear: float32 CPU inference matmuls of every linear layer through oneDNN instead
            of MKL (:mod:`controller.model.common.linear`: faster on AMD CPUs; training, autocast,
            other devices and compiled code keep ``F.linear``; same outputs up to float rounding).
        attn_map_samples: number of batch samples whose attention maps are returned.
        start_ckpt_path: weights to start from (consumed by the workspace, kept for the config).
    """

    def __init__(self, shape_meta: Mapping, noise_scheduler, obs_encoder: ObsEncoder,
                 num_inference_steps: Optional[int] = 16, n_layer: int = 12, n_head: int = 8,
                 p_drop_attn: float = 0.1, mlp_ratio: float = 1.0, use_attn_mask: bool = False,
                 cond_drop_probs: Tuple[float, float, float] = (0.1, 0.1, 0.1),
                 immiscible_noise: bool = True, mask_padded_actions: bool = True,
                 cache_condition_kv: bool = True, fused_attention: bool = True, onednn_linear: bool = True,
                 attn_map_samples: int = 2,
                 start_ckpt_path: Optional[str] = None, **scheduler_step_kwargs) -> None:
        super().__init__()
        self.shape_meta = validate_shape_meta(shape_meta, "policy.shape_meta")
        self.action_dim = action_dim_of(self.shape_meta)
        self.action_horizon = action_horizon_of(self.shape_meta)
        self.obs_encoder = obs_encoder
        n_obs_tokens = obs_encoder.num_tokens
        self.model = TransformerForActionDiffusion(
            input_dim=self.action_dim, output_dim=self.action_dim, action_horizon=self.action_horizon,
            n_layer=n_layer, n_head=n_head, n_emb=obs_encoder.feature_dim,
            max_cond_tokens=n_obs_tokens + 1, p_drop_attn=p_drop_attn, mlp_ratio=mlp_ratio)
        self.noise_scheduler = noise_scheduler
        self.normalizer = LinearNormalizer()
        self.num_inference_steps = int(num_inference_steps or noise_scheduler.config.num_train_timesteps)
        self.use_attn_mask = bool(use_attn_mask)
        self.cond_drop_probs = tuple(float(p) for p in cond_drop_probs)
        if len(self.cond_drop_probs) != 3 or sum(self.cond_drop_probs) > 1:
            raise ValueError(f"cond_drop_probs must be 3 probabilities summing to <= 1, got {cond_drop_probs}")
        self.immiscible_noise = bool(immiscible_noise)
        self.mask_padded_actions = bool(mask_padded_actions)
        self.cache_condition_kv = bool(cache_condition_kv)
        self.set_fused_attention(fused_attention)
        self.set_onednn_linear(onednn_linear)
        self.attn_map_samples = int(attn_map_samples)
        self.start_ckpt_path = start_ckpt_path
        self.scheduler_step_kwargs = dict(scheduler_step_kwargs)
        pred_type = noise_scheduler.config.prediction_type
        if pred_type not in ("epsilon", "sample"):
            raise ValueError(f"noise_scheduler.prediction_type must be 'epsilon' or 'sample', got '{pred_type}'")

    # ------------------------------------------------------------------ info
    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def set_fused_attention(self, enabled: bool) -> None:
        """Fused SDPA (True) or explicit attention math (False) in the DiT and the backbones."""
        from controller.model.diffusion.layers import set_fused_attention
        self.fused_attention = bool(enabled)
        set_fused_attention(self, self.fused_attention)

    def set_onednn_linear(self, enabled: bool) -> None:
        """oneDNN (True) or MKL (``F.linear``, False) for the float32 CPU inference matmuls of every
        linear layer (:func:`controller.model.common.linear.set_onednn_linear`)."""
        from controller.model.common.linear import set_onednn_linear
        self.onednn_linear = bool(enabled)
        set_onednn_linear(self, self.onednn_linear)

    def compile_for_inference(self, freezing: bool = True, **options) -> None:
        """Compile the observation encoder, the condition K/V projection and the cached denoising
        steps for deployment (see :mod:`controller.policy.inference_compile`); the first chunk
        afterwards compiles. Call it after the weights are loaded: with ``freezing`` they are baked
        into the compiled code."""
        from controller.policy.inference_compile import InferenceCompiler
        self._inference_compiler = InferenceCompiler(self, freezing, options)

    def set_normalizer(self, normalizer: LinearNormalizer) -> None:
        """Copy a fitted normaliser (from the dataset) into the policy."""
        self.normalizer.load_state_dict(normalizer.state_dict())

    def token_parts(self) -> Tuple[list, list]:
        """Names and sizes of the condition's parts, time token included."""
        enc = self.obs_encoder
        return enc.part_names + ["time"], enc.part_lengths + [1]

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample_actions(self, obs: Mapping[str, torch.Tensor], num_samples: int,
                       noise: Optional[torch.Tensor] = None, return_attention: bool = False):
        """Denoise ``num_samples`` action chunks per observation from independent noise draws,
        encoding each observation once.

        Returns actions (B, num_samples, horizon, action_dim), unnormalised; with
        ``return_attention`` also the record of :meth:`predict_action`, holding the attention of
        each observation's first sample. ``noise``: optional (B, num_samples, horizon, action_dim).
        """
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        k = int(num_samples)
        if noise is not None:
            if noise.dim() != 4 or noise.shape[1] != k:
                raise ValueError(f"noise must have shape (B, {k}, horizon, action_dim), got {tuple(noise.shape)}")
            noise = noise.flatten(0, 1)                                    # (B*k, horizon, action_dim)
        out = self._denoise(obs, noise, return_attention, k)
        actions, record = out if return_attention else (out, None)        # (B*k, horizon, action_dim)
        actions = actions.unflatten(0, (-1, k))                           # (B, k, horizon, action_dim)
        return (actions, record) if return_attention else actions

    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, torch.Tensor], noise: Optional[torch.Tensor] = None,
                       return_attention: bool = False):
        """Denoise an action chunk.

        Args:
            obs: observation dict (see module docstring).
            noise: optional initial noise (B, horizon, action_dim) for deterministic tests.
            return_attention: also return the attention record (see below).

        Returns:
            actions (B, horizon, action_dim), unnormalised; with ``return_attention`` a tuple
            ``(actions, record)`` where ``record`` holds ``attn`` float16
            (steps, blocks, min(B, attn_map_samples), heads, N+1), ``timesteps`` (steps,),
            ``token_part_names``, ``token_part_sizes``, ``head_grid``, ``wrist_grid``.
        """
        return self._denoise(obs, noise, return_attention, 1)

    def _denoise(self, obs: Mapping[str, torch.Tensor], noise: Optional[torch.Tensor], return_attention: bool,
                 samples: int):
        """predict_action with ``samples`` noise draws per observation (batch B * samples)."""
        if "head_tokens" in obs or "wrist_tokens" in obs:  # cached backbone tokens (feature cache)
            B = self.obs_encoder.check_cached_obs(obs)
        else:
            B = check_model_obs(obs, self.shape_meta, "predict_action obs")
        device = self.device
        compiled = getattr(self, "_inference_compiler", None) if not self.training else None
        if compiled is not None:
            compiled.check()
        encode = compiled.encoder if compiled is not None else self.obs_encoder
        cond = encode(obs, training=False)  # (B, N, D)
        B = B * samples  # sample_actions: each observation denoised from `samples` noise draws
        shape = (B, self.action_horizon, self.action_dim)
        if noise is None:
            traj = torch.randn(shape, device=device, dtype=torch.float32)
        else:
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
            traj = noise.to(device=device, dtype=torch.float32)
        sched = self.noise_scheduler
        sched.set_timesteps(self.num_inference_steps)
        cache = None
        if self.cache_condition_kv:
            project = compiled.project_condition if compiled is not None else None
            # per observation (B, h, N+1, d): its `samples` noise draws share the keys/values
            cache = self.model.prepare_condition(cond, sched.timesteps, project=project)
        elif samples > 1:
            cond = cond.repeat_interleave(samples, dim=0)                              # (B*k, N, D)
        maps, steps = [], []
        # attention of the first samples of the batch; with several samples per observation, of
        # each observation's first sample (rows 0, k, 2k, ... of the repeated batch)
        keep = torch.arange(0, B, samples)[:self.attn_map_samples]
        for t in sched.timesteps:
            model_in = traj.to(cond.dtype)
            if cache is not None:
                run = compiled.run_blocks if compiled is not None and not return_attention else None
                out, attn = self.model.forward_cached(model_in, t, cache, capture_attention=return_attention,
                                                      run_blocks=run)
            else:
                out, attn = self.model(model_in, t, cond, capture_attention=return_attention)
            traj = sched.step(out.float(), t, traj, **self.scheduler_step_kwargs).prev_sample
            if return_attention:
                maps.append(torch.stack([a[keep] for a in attn]).cpu())  # (blocks, b, h, N+1)
                steps.append(int(t))
        actions = self.normalizer["action"].unnormalize(traj)
        if not return_attention:
            return actions
        names, sizes = self.token_parts()
        record = {
            "attn": torch.stack(maps).to(torch.float16).numpy(),  # (steps, blocks, b, h, N+1)
            "timesteps": np.asarray(steps, dtype=np.int64),
            "token_part_names": np.asarray(names),
            "token_part_sizes": np.asarray(sizes, dtype=np.int64),
            "head_grid": np.asarray(self.obs_encoder.grid, dtype=np.int64),
            "wrist_grid": np.asarray(self.obs_encoder.wrist_backbone.grid, dtype=np.int64),
        }
        return actions, record

    # ------------------------------------------------------------------ training
    def _condition_mask(self, batch: int, n_cond: int, device) -> Optional[torch.Tensor]:
        """Per-sample condition dropout: bool (B, n_cond + 1), True = token visible."""
        if not (self.use_attn_mask and self.training):
            return None
        n_head, n_wrist, _ = self.obs_encoder.part_lengths
        p_head, p_wrist, p_both = self.cond_drop_probs
        probs = torch.tensor([p_head, p_wrist, p_both, 1.0 - p_head - p_wrist - p_both], device=device)
        choice = torch.multinomial(probs, batch, replacement=True)  # (B,)
        mask = torch.ones(batch, n_cond + 1, dtype=torch.bool, device=device)
        drop_head = (choice == 0) | (choice == 2)
        drop_wrist = (choice == 1) | (choice == 2)
        mask[drop_head, :n_head] = False
        mask[drop_wrist, n_head:n_head + n_wrist] = False
        return mask

    def compute_loss(self, batch: Mapping[str, object]) -> torch.Tensor:
        """Diffusion loss of a batch ``{'obs': {...}, 'action': (B, T, A), 'action_is_pad': (B, T)}``."""
        nactions = self.normalizer["action"].normalize(batch["action"]).float()  # (B, T, A)
        B = nactions.shape[0]
        cond = self.obs_encoder(batch["obs"], training=self.training)          # (B, N, D)
        noise = torch.randn_like(nactions)
        if self.immiscible_noise and B > 1:
            noise = noise[noise_assignment(nactions, noise)]
        sched = self.noise_scheduler
        t = torch.randint(0, sched.config.num_train_timesteps, (B,), device=nactions.device).long()
        noisy = sched.add_noise(nactions, noise, t)
        mask = self._condition_mask(B, cond.shape[1], cond.device)
        pred, _ = self.model(noisy.to(cond.dtype), t, cond, cond_mask=mask)
        target = noise if sched.config.prediction_type == "epsilon" else nactions
        err = F.mse_loss(pred.float(), target, reduction="none")               # (B, T, A)
        pad = batch.get("action_is_pad") if isinstance(batch, Mapping) else None
        if self.mask_padded_actions and pad is not None:
            valid = (~pad.bool()).unsqueeze(-1).to(err.dtype)                  # (B, T, 1)
            return (err * valid).sum() / (valid.sum() * err.shape[-1]).clamp_min(1.0)
        return err.mean()

    def forward(self, batch: Mapping[str, object]) -> torch.Tensor:
        """Training forward (so DDP wrappers see the loss computation)."""
        return self.compute_loss(batch)

    def get_optimizer(self, lr: float, weight_decay: float, betas=(0.95, 0.999)) -> torch.optim.Optimizer:
        """AdamW with weight decay on >= 2-D trainable tensors only."""
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        decay = [p for _, p in params if p.dim() >= 2]
        no_decay = [p for _, p in params if p.dim() < 2]
        logger.info("optimizer: %d decayed tensors (%d params), %d non-decayed (%d params)",
                    len(decay), sum(p.numel() for p in decay), len(no_decay), sum(p.numel() for p in no_decay))
        return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=tuple(betas))


def obs_to_uint8_images(obs: Mapping[str, torch.Tensor], n: int) -> Dict[str, np.ndarray]:
    """First ``n`` samples' model inputs as uint8 HWC images (for attention-map files).

    Returns rgbm (n, H, W, 4) BGR + mask 0/255, right_cam_img (n, H, W, 3) BGR, right_state (n, S).
    Images absent from a feature-cache batch (mask-only rgbm, no wrist image) come out black.
    """
    rgbm = obs["rgbm"][:n, 0].detach().float().cpu()                    # (n, 4 or 1, H, W)
    if rgbm.shape[1] == 1:                                              # mask only: black BGR
        rgbm = torch.cat([torch.zeros_like(rgbm).expand(-1, 3, -1, -1), rgbm], dim=1)
    wrist = obs.get("right_cam_img")
    wrist = (wrist[:n, 0].detach().float().cpu() if wrist is not None
             else torch.zeros_like(rgbm[:, :3]))                         # (n, 3, H, W)
    to8 = lambda x: (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # noqa: E731
    return {"rgbm": to8(rgbm), "right_cam_img": to8(wrist),
            "right_state": obs["right_state"][:n, 0].detach().float().cpu().numpy()}
