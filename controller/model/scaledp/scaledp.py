"""ScaleDP: the diffusion action expert of DexVLA, a DiT over the action chunk with adaLN-Zero blocks.

Structure (facts from the public DexVLA code, written anew here):

* the noisy action chunk ``x`` (B, H, A) is embedded by one linear map ``x_embedder`` (A -> W) plus
  a learned position embedding ``pos_embed`` (1, H, W);
* the **condition vector** ``c`` (B, W) is formed as::

      obs = combine(concat([cond, state], -1))      # (B, D_vlm + D_state) -> MLP -> (B, D_vlm)
      c   = t_embedder(t) + cond_obs_emb(obs)        # (B, W) + Linear(D_vlm -> W) -> (B, W)

  ``cond`` is the pooled (and, upstream, FiLM-modulated) VLM embedding (B, D_vlm), ``state`` the
  robot state (B, D_state). ``combine`` is Linear(D_vlm + D_state -> 1024), ReLU, Linear(1024 ->
  1024), ReLU, Linear(1024 -> D_vlm); ``t_embedder`` is the sinusoidal (256 frequencies, [cos, sin])
  timestep embedding followed by Linear -> SiLU -> Linear. So the state enters by concatenation with
  the VLM embedding before the MLP, and the timestep by addition after the projection to width W;
* ``depth`` blocks, each (adaLN-Zero, as in DiT)::

      shift1, scale1, gate1, shift2, scale2, gate2 = adaLN_modulation(c)    # SiLU -> Linear(W -> 6W)
      x = x + gate1 * attn(LN(x) * (1 + scale1) + shift1)
      x = x + gate2 * mlp(LN(x) * (1 + scale2) + shift2)

  with LayerNorms without affine parameters, full (non-causal) self-attention with qkv bias, and a
  tanh-GELU MLP of width ``mlp_ratio * W``. ``adaLN_modulation`` is zero-initialised, so every gate
  is 0 and every block is the identity at initialisation;
* a final adaLN layer: ``linear(LN(x) * (1 + scale) + shift)`` with (shift, scale) from SiLU ->
  Linear(W -> 2W) of ``c`` (zero-initialised, as is ``linear``: the untrained model outputs zeros).

Parameter names follow the reference (``x_embedder``, ``t_embedder.mlp.{0,2}``, ``pos_embed``,
``combine.{0,2,4}``, ``cond_obs_emb``, ``blocks.N.attn.{qkv,proj}``, ``blocks.N.mlp.{fc1,fc2}``,
``blocks.N.adaLN_modulation.1``, ``final_layer.{linear,adaLN_modulation.1}``) so that a converter of
the released stage-1 checkpoints can map keys one to one (not written yet).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Tuple, Union

import torch
import torch.utils.checkpoint
import torch.nn as nn

from controller.model.diffusion.layers import Mlp, TimestepEmbedder, attention

#: (depth, width, heads). L and H are DexVLA's; S and B are DiT's sizes (DiT-S: 12 / 384 / 6,
#: DiT-B: 12 / 768 / 12), which the public DexVLA code does not define.
PRESETS: Dict[str, Tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "H": (32, 1280, 16),
}


@dataclass(frozen=True)
class ScaleDPConfig:
    """Sizes of a ScaleDP network.

    Args:
        action_dim: A, the action dimension (input and output of the denoiser).
        horizon: H, the action-chunk length (number of tokens; size of ``pos_embed``).
        cond_dim: D_vlm, the width of the pooled VLM embedding (Qwen2-VL-2B: 1536).
        state_dim: D_state, the robot-state dimension (concatenated to the VLM embedding).
        depth / width / num_heads: transformer size (see :data:`PRESETS`).
        mlp_ratio: hidden width of the block MLP over ``width`` (DiT and DexVLA: 4).
        combine_hidden: hidden width of the ``combine`` MLP (reference: 1024).
        frequency_dim: number of sinusoidal timestep features (256).
    """

    action_dim: int = 14
    horizon: int = 50
    cond_dim: int = 1536
    state_dim: int = 14
    depth: int = 12
    width: int = 384
    num_heads: int = 6
    mlp_ratio: float = 4.0
    combine_hidden: int = 1024
    frequency_dim: int = 256

    @classmethod
    def preset(cls, size: str, **kwargs) -> "ScaleDPConfig":
        """``ScaleDPConfig.preset("H", action_dim=14, ...)``: S / B / L / H sizes, other fields free."""
        if size not in PRESETS:
            raise ValueError(f"unknown ScaleDP size {size!r}; expected one of {sorted(PRESETS)}")
        depth, width, heads = PRESETS[size]
        return replace(cls(**kwargs), depth=depth, width=width, num_heads=heads)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, T, W), shift / scale (B, W) -> x * (1 + scale) + shift, broadcast over T."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)  # (B, T, W)


class ScaleDPAttention(nn.Module):
    """Multi-head self-attention over the action tokens (qkv with bias, no QK norm, no mask)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.proj = nn.Linear(width, width)
        self.fused_attn = True  # same switch as controller.model.diffusion.layers.set_fused_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, W) -> (B, T, W)."""
        B, T, W = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3,B,h,T,d)
        q, k, v = qkv.unbind(0)                                                       # each (B, h, T, d)
        y = attention(q, k, v, fused=self.fused_attn)                                  # (B, h, T, d)
        return self.proj(y.transpose(1, 2).reshape(B, T, W))                           # (B, T, W)


class ScaleDPBlock(nn.Module):
    """One adaLN-Zero transformer block (identity at initialisation: its gates start at 0)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = ScaleDPAttention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (B, T, W) action tokens, c: (B, W) condition -> (B, T, W)."""
        mods = self.adaLN_modulation(c).chunk(6, dim=-1)                              # 6 x (B, W)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))  # (B, T, W)
        x = x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))   # (B, T, W)
        return x


class FinalLayer(nn.Module):
    """Final adaLN layer: LN -> modulate by (shift, scale) of c -> Linear(W -> A)."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (B, T, W), c: (B, W) -> (B, T, A)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)                      # 2 x (B, W)
        return self.linear(modulate(self.norm_final(x), shift, scale))                # (B, T, A)


class ScaleDP(nn.Module):
    """The ScaleDP denoiser: ``forward(x (B, H, A), t (B,) | scalar, cond (B, D_vlm), state (B, D_state))
    -> (B, H, A)`` (the noise or the clean chunk, depending on how the expert trains it).

    The condition does not depend on the diffusion step, so samplers call :meth:`embed_condition`
    once per chunk and :meth:`forward_embedded` per step.
    """

    def __init__(self, config: ScaleDPConfig) -> None:
        super().__init__()
        self.config = cfg = config
        W = cfg.width
        self.x_embedder = nn.Linear(cfg.action_dim, W)
        self.t_embedder = TimestepEmbedder(W, cfg.frequency_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.horizon, W))
        self.combine = nn.Sequential(
            nn.Linear(cfg.cond_dim + cfg.state_dim, cfg.combine_hidden), nn.ReLU(),
            nn.Linear(cfg.combine_hidden, cfg.combine_hidden), nn.ReLU(),
            nn.Linear(cfg.combine_hidden, cfg.cond_dim))
        self.cond_obs_emb = nn.Linear(cfg.cond_dim, W)
        self.blocks = nn.ModuleList([ScaleDPBlock(W, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(W, cfg.action_dim)
        #: recompute block activations in backward (training only): memory for compute, same gradients
        self.gradient_checkpointing = False
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """DiT initialisation: xavier-uniform linears with zero biases, N(0, 0.02) for the position
        embedding, the condition projection and the timestep MLP, and **zeros** for every adaLN
        modulation and for the final linear (adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cond_obs_emb.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def embed_condition(self, cond: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """cond (B, D_vlm), state (B, D_state) -> the observation part of the condition, (B, W)."""
        obs = self.combine(torch.cat([cond, state.to(cond.dtype)], dim=-1))            # (B, D_vlm)
        return self.cond_obs_emb(obs)                                                  # (B, W)

    def _timesteps(self, t: Union[torch.Tensor, int, float], batch: int, device) -> torch.Tensor:
        """Scalar or (B,) timestep -> (B,)."""
        t = t if torch.is_tensor(t) else torch.tensor([t], device=device)
        t = t.to(device).reshape(-1)                                                   # (1,) or (B,)
        return t.expand(batch) if t.numel() == 1 else t                                # (B,)

    def forward_embedded(self, x: torch.Tensor, t: Union[torch.Tensor, int, float],
                         obs_emb: torch.Tensor) -> torch.Tensor:
        """x (B, H, A) noisy chunk, t scalar or (B,), obs_emb (B, W) from :meth:`embed_condition`
        -> (B, H, A)."""
        B, H, _ = x.shape
        if H > self.config.horizon:
            raise ValueError(f"chunk of {H} steps exceeds the model horizon {self.config.horizon}")
        h = self.x_embedder(x) + self.pos_embed[:, :H]                                 # (B, H, W)
        c = self.t_embedder(self._timesteps(t, B, x.device)) + obs_emb                 # (B, W)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # keep only block inputs; activations are recomputed in backward
                h = torch.utils.checkpoint.checkpoint(block, h, c, use_reentrant=False)  # (B, H, W)
            else:
                h = block(h, c)                                                        # (B, H, W)
        return self.final_layer(h, c)                                                  # (B, H, A)

    def forward(self, x: torch.Tensor, t: Union[torch.Tensor, int, float], cond: torch.Tensor,
                state: torch.Tensor) -> torch.Tensor:
        """x (B, H, A), t scalar or (B,), cond (B, D_vlm), state (B, D_state) -> (B, H, A)."""
        return self.forward_embedded(x, t, self.embed_condition(cond, state))          # (B, H, A)


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (works on the meta device: nothing is allocated)."""
    return sum(p.numel() for p in module.parameters())
