"""ScaleDPExpert: the DexVLA action expert as a diffusion model (training loss and DDIM sampling).

Inputs are already normalised actions (the policy owns normalisation). The expert holds

* ``reasoning_film`` (:class:`ReasoningFiLM`, optional): modulates the pooled VLM embedding ``cond``
  (B, D_vlm) with the pooled, projected reasoning hidden states (identity at initialisation);
* ``model``: the denoiser, conditioned on the modulated ``cond``, the robot state and the diffusion
  timestep: :class:`ScaleDP` (a :class:`ScaleDPConfig`, head ``scaledp``) or the 1-D conditional
  UNet :class:`~controller.model.scaledp.unet.ConditionalUNet1D` (a :class:`UNetConfig`, head ``unet``);
* a diffusers ``DDPMScheduler`` (training: forward noising) and a ``DDIMScheduler`` (sampling,
  ``eta = 0``: deterministic given the initial noise), both with the same beta schedule.

Padding: chunks are padded at the episode end with an ``action_is_pad`` mask (B, H). Padded
positions are excluded from the loss (mean over valid elements only), and before noising their
action values are replaced by the last valid action of the chunk (zeros if none precedes), so the
loss does not depend on what the data loader wrote there.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from controller.model.scaledp.film import ReasoningFiLM
from controller.model.scaledp.scaledp import ScaleDP, ScaleDPConfig
from controller.model.scaledp.unet import ConditionalUNet1D, UNetConfig

PREDICTION_TYPES = ("epsilon", "sample")
#: action heads of the expert: name -> (config class, network class)
HEADS = {"scaledp": (ScaleDPConfig, ScaleDP), "unet": (UNetConfig, ConditionalUNet1D)}


def build_head(config: Union[ScaleDPConfig, UNetConfig]) -> nn.Module:
    """The denoiser for a config: :class:`ScaleDP` or :class:`ConditionalUNet1D`."""
    for config_cls, net_cls in HEADS.values():
        if isinstance(config, config_cls):
            return net_cls(config)
    raise TypeError(f"expert config must be a ScaleDPConfig or UNetConfig, got {type(config).__name__}")


def hold_last_valid(actions: torch.Tensor, is_pad: Optional[torch.Tensor]) -> torch.Tensor:
    """Replace padded steps by the most recent valid step (zeros when no valid step precedes).

    actions: (B, H, A); is_pad: (B, H) bool, True = padded (None: nothing padded) -> (B, H, A).
    """
    if is_pad is None:
        return actions                                                                  # (B, H, A)
    B, H, A = actions.shape
    steps = torch.arange(H, device=actions.device).expand(B, H)                         # (B, H)
    src = torch.where(is_pad, torch.full_like(steps, -1), steps).cummax(dim=1).values   # (B, H)
    gathered = actions.gather(1, src.clamp(min=0).unsqueeze(-1).expand(B, H, A))        # (B, H, A)
    return torch.where((src >= 0).unsqueeze(-1), gathered, torch.zeros_like(actions))   # (B, H, A)


class ScaleDPExpert(nn.Module):
    """Diffusion action expert built around :class:`ScaleDP` or the 1-D conditional UNet.

    Args:
        config: the network sizes: :class:`ScaleDPConfig` (e.g. ``ScaleDPConfig.preset("H", ...)``)
            for the ScaleDP head, :class:`UNetConfig` for the UNet head.
        prediction_type: ``"epsilon"`` (predict the noise; DexVLA's choice) or ``"sample"``
            (predict the clean chunk).
        num_train_timesteps: diffusion steps of the training schedule (DexVLA: 100).
        num_inference_steps: default DDIM steps of :meth:`sample` (DexVLA: 10).
        beta_schedule: diffusers beta schedule (DexVLA: ``"squaredcos_cap_v2"``).
        clip_sample: clip the predicted clean chunk to [-1, 1] in each scheduler step.
        use_reasoning_film: build :class:`ReasoningFiLM` (without it ``reasoning`` must be None).
        reasoning_dim: width of the reasoning hidden states (default: ``config.cond_dim``).
    """

    def __init__(self, config: Union[ScaleDPConfig, UNetConfig], prediction_type: str = "epsilon",
                 num_train_timesteps: int = 100, num_inference_steps: int = 10,
                 beta_schedule: str = "squaredcos_cap_v2", clip_sample: bool = True,
                 use_reasoning_film: bool = True, reasoning_dim: Optional[int] = None) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, not {prediction_type!r}")
        self.config = config
        self.prediction_type = prediction_type
        self.num_inference_steps = num_inference_steps
        self.model = build_head(config)
        self.head = "unet" if isinstance(config, UNetConfig) else "scaledp"
        self.reasoning_film = ReasoningFiLM(config.cond_dim, reasoning_dim) if use_reasoning_film else None
        common = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                      clip_sample=clip_sample, prediction_type=prediction_type)
        self.train_scheduler = DDPMScheduler(**common)
        self.sample_scheduler = DDIMScheduler(**common, set_alpha_to_one=True, steps_offset=0)

    # ------------------------------------------------------------------ condition
    def condition(self, cond: torch.Tensor, state: torch.Tensor, reasoning: Optional[torch.Tensor] = None,
                  reasoning_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The step-independent condition: cond (B, D_vlm), state (B, D_state), reasoning
        (B, L_r, D_r) or None, reasoning_mask (B, L_r) bool -> (B, W) for ``forward_embedded``."""
        if reasoning is not None:
            if self.reasoning_film is None:
                raise ValueError("reasoning given but the expert was built with use_reasoning_film=False")
            cond = self.reasoning_film(cond, reasoning, reasoning_mask)                 # (B, D_vlm)
        return self.model.embed_condition(cond, state)                                  # (B, W)

    # ------------------------------------------------------------------ training
    def compute_loss(self, actions: torch.Tensor, action_is_pad: Optional[torch.Tensor], cond: torch.Tensor,
                     state: torch.Tensor, reasoning: Optional[torch.Tensor] = None,
                     reasoning_mask: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                     timesteps: Optional[torch.Tensor] = None,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Diffusion loss (scalar): MSE between the prediction and its target (the noise for
        ``epsilon``, the clean chunk for ``sample``), averaged over the non-padded elements.

        actions (B, H, A) normalised; action_is_pad (B, H) bool or None; cond (B, D_vlm); state
        (B, D_state); reasoning (B, L_r, D_r) or None with reasoning_mask (B, L_r). ``noise``
        (B, H, A) and ``timesteps`` (B,) long may be given (tests); otherwise drawn from
        ``generator`` (or the global RNG).
        """
        B, H, A = actions.shape
        if H > self.config.horizon:
            raise ValueError(f"chunk of {H} steps exceeds the model horizon {self.config.horizon}")
        clean = hold_last_valid(actions, action_is_pad)                                 # (B, H, A)
        if noise is None:
            noise = torch.randn(clean.shape, generator=generator, device=clean.device,
                                dtype=clean.dtype)                                      # (B, H, A)
        if timesteps is None:
            timesteps = torch.randint(0, self.train_scheduler.config.num_train_timesteps, (B,),
                                      generator=generator, device=clean.device)         # (B,)
        timesteps = timesteps.long()                                                    # (B,)
        noisy = self.train_scheduler.add_noise(clean, noise, timesteps)                 # (B, H, A)
        obs_emb = self.condition(cond, state, reasoning, reasoning_mask)                # (B, W)
        pred = self.model.forward_embedded(noisy, timesteps, obs_emb)                   # (B, H, A)
        target = noise if self.prediction_type == "epsilon" else clean                  # (B, H, A)
        err = F.mse_loss(pred, target, reduction="none")                                # (B, H, A)
        if action_is_pad is None:
            return err.mean()
        valid = (~action_is_pad).to(err.dtype).unsqueeze(-1)                            # (B, H, 1)
        return (err * valid).sum() / (valid.sum() * A).clamp(min=1.0)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample(self, cond: torch.Tensor, state: torch.Tensor, reasoning: Optional[torch.Tensor] = None,
               reasoning_mask: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
               num_inference_steps: Optional[int] = None, horizon: Optional[int] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """DDIM sampling (eta = 0) of a normalised action chunk.

        cond (B, D_vlm), state (B, D_state), reasoning (B, L_r, D_r) or None, reasoning_mask
        (B, L_r); ``noise`` (B, H, A) is the initial sample (drawn from ``generator`` if None, with
        H = ``horizon`` or the model horizon). Deterministic given ``noise``. Returns (B, H, A).
        """
        B = cond.shape[0]
        if noise is None:
            H = horizon or self.config.horizon
            noise = torch.randn((B, H, self.config.action_dim), generator=generator,
                                device=cond.device, dtype=cond.dtype)                  # (B, H, A)
        scheduler = DDIMScheduler.from_config(self.sample_scheduler.config)  # own timestep state per call
        scheduler.set_timesteps(num_inference_steps or self.num_inference_steps, device=cond.device)
        obs_emb = self.condition(cond, state, reasoning, reasoning_mask)                # (B, W)
        x = noise                                                                       # (B, H, A)
        for t in scheduler.timesteps:
            out = self.model.forward_embedded(x, t, obs_emb)                            # (B, H, A)
            x = scheduler.step(out, t, x).prev_sample                                   # (B, H, A)
        return x                                                                        # (B, H, A)
