"""A 1-D conditional UNet over the action chunk: DexVLA's alternative action head to ScaleDP.

Diffusion-Policy style: Conv1d residual blocks (Conv1d -> GroupNorm -> Mish, twice) whose features
are FiLM-modulated by one global condition vector, on a down path (strided convs) and an up path
(transposed convs + skip connections)::

    x (B, H, A) -> (B, A, H) channels-first
    global g (B, G) = concat([step_emb(t) (B, E_t), obs_emb (B, E_o)])      # G = E_t + E_o
    obs_emb        = obs_mlp(concat([cond (B, D_vlm), state (B, D_state)]))  # Linear -> Mish -> Linear
    down level i:  2 residual blocks (-> d_i channels), keep a skip, Conv1d(k3, s2) (not after the last)
    middle:        2 residual blocks at d_last
    up level i:    ConvTranspose1d(k4, s2) (length 2L, cropped to the skip's), concat the skip,
                   2 residual blocks (-> d_i)
    out:           Conv1d block (d_0) -> Conv1d(d_0 -> A, k1) -> (B, H, A)

Any horizon works: a level of odd length L goes down to ceil(L / 2) and the up path crops the
doubled length back to the skip's length. Residual block FiLM: ``h = h * (1 + scale) + shift`` with
(scale, shift) = Linear(Mish(g)) per channel.

It exposes the same interface as :class:`~controller.model.scaledp.scaledp.ScaleDP`
(``embed_condition`` once per chunk, ``forward_embedded`` per denoising step, ``config.horizon``
/ ``config.action_dim`` / ``config.cond_dim``), so :class:`~controller.model.scaledp.expert.ScaleDPExpert`
drives either head with the same schedulers, padding rule and reasoning FiLM.

diffusers' ``UNet1DModel`` is not used: its forward takes only the sample and the timestep (no
global-condition input for the VLM/state embedding) and its blocks need horizons divisible by 2^levels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from controller.model.diffusion.layers import TimestepEmbedder


@dataclass(frozen=True)
class UNetConfig:
    """Sizes of a :class:`ConditionalUNet1D`.

    Args:
        action_dim: A (input and output channels).
        horizon: H, the default chunk length (the network itself accepts any length <= H).
        cond_dim: D_vlm, width of the pooled VLM embedding.
        state_dim: D_state, robot-state dimension.
        down_dims: channel width per level (Diffusion Policy: 256, 512, 1024).
        kernel_size: Conv1d kernel of the residual blocks (odd).
        n_groups: GroupNorm groups (must divide every width).
        step_embed_dim: E_t, width of the diffusion-step embedding.
        obs_embed_dim: E_o, width of the (VLM + state) condition embedding.
        frequency_dim: sinusoidal timestep features.
    """

    action_dim: int = 14
    horizon: int = 50
    cond_dim: int = 1536
    state_dim: int = 14
    down_dims: Tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 256
    obs_embed_dim: int = 256
    frequency_dim: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "down_dims", tuple(int(d) for d in self.down_dims))
        if not self.down_dims:
            raise ValueError("down_dims needs at least one level")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        bad = [d for d in self.down_dims if d % self.n_groups]
        if bad:
            raise ValueError(f"n_groups {self.n_groups} must divide every down_dims width, not {bad}")


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish: (B, C_in, L) -> (B, C_out, L)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(n_groups, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(self.norm(self.conv(x)))                                         # (B, C_out, L)


class ResidualBlock1D(nn.Module):
    """Two Conv1d blocks with FiLM of the global condition between them, plus a (1x1) skip:
    x (B, C_in, L), g (B, G) -> (B, C_out, L)."""

    def __init__(self, c_in: int, c_out: int, global_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.block1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.block2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(global_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)                                                             # (B, C_out, L)
        scale, shift = self.film(g).unsqueeze(-1).chunk(2, dim=1)                      # 2 x (B, C_out, 1)
        h = h * (1 + scale) + shift                                                    # (B, C_out, L)
        return self.block2(h) + self.skip(x)                                           # (B, C_out, L)


class ConditionalUNet1D(nn.Module):
    """The UNet head: ``forward(x (B, H, A), t scalar | (B,), cond (B, D_vlm), state (B, D_state))
    -> (B, H, A)``; samplers call :meth:`embed_condition` once and :meth:`forward_embedded` per step."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        k, ng, dims = cfg.kernel_size, cfg.n_groups, cfg.down_dims
        G = cfg.step_embed_dim + cfg.obs_embed_dim
        self.obs_mlp = nn.Sequential(nn.Linear(cfg.cond_dim + cfg.state_dim, cfg.obs_embed_dim), nn.Mish(),
                                     nn.Linear(cfg.obs_embed_dim, cfg.obs_embed_dim))
        self.step_mlp = nn.Sequential(nn.Linear(cfg.frequency_dim, cfg.step_embed_dim), nn.Mish(),
                                      nn.Linear(cfg.step_embed_dim, cfg.step_embed_dim))
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c_in = cfg.action_dim
        for i, d in enumerate(dims):
            self.down.append(nn.ModuleList([ResidualBlock1D(c_in, d, G, k, ng), ResidualBlock1D(d, d, G, k, ng)]))
            if i < len(dims) - 1:
                self.downsample.append(nn.Conv1d(d, d, 3, stride=2, padding=1))
            c_in = d
        self.mid = nn.ModuleList([ResidualBlock1D(dims[-1], dims[-1], G, k, ng),
                                  ResidualBlock1D(dims[-1], dims[-1], G, k, ng)])
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in reversed(range(len(dims) - 1)):  # coarse to fine: level i receives d_{i+1} channels
            self.upsample.append(nn.ConvTranspose1d(dims[i + 1], dims[i + 1], 4, stride=2, padding=1))
            self.up.append(nn.ModuleList([ResidualBlock1D(dims[i + 1] + dims[i], dims[i], G, k, ng),
                                          ResidualBlock1D(dims[i], dims[i], G, k, ng)]))
        self.final = nn.Sequential(Conv1dBlock(dims[0], dims[0], k, ng), nn.Conv1d(dims[0], cfg.action_dim, 1))
        #: recompute residual-block activations in backward (training only)
        self.gradient_checkpointing = False

    def embed_condition(self, cond: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """cond (B, D_vlm), state (B, D_state) -> the observation part of the global condition (B, E_o)."""
        return self.obs_mlp(torch.cat([cond, state.to(cond.dtype)], dim=-1))          # (B, E_o)

    def _step_embedding(self, t: Union[torch.Tensor, int, float], batch: int, device) -> torch.Tensor:
        """Scalar or (B,) timestep -> (B, E_t)."""
        t = t if torch.is_tensor(t) else torch.tensor([t], device=device)
        t = t.to(device).reshape(-1)                                                   # (1,) or (B,)
        t = t.expand(batch) if t.numel() == 1 else t                                   # (B,)
        freq = TimestepEmbedder.sinusoidal(t, self.config.frequency_dim)               # (B, F)
        return self.step_mlp(freq.to(self.step_mlp[0].weight.dtype))                   # (B, E_t)

    def _res(self, block: ResidualBlock1D, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, x, g, use_reentrant=False)
        return block(x, g)

    def forward_embedded(self, x: torch.Tensor, t: Union[torch.Tensor, int, float],
                         obs_emb: torch.Tensor) -> torch.Tensor:
        """x (B, H, A) noisy chunk, t scalar or (B,), obs_emb (B, E_o) -> (B, H, A)."""
        B, H, _ = x.shape
        if H > self.config.horizon:
            raise ValueError(f"chunk of {H} steps exceeds the model horizon {self.config.horizon}")
        g = torch.cat([self._step_embedding(t, B, x.device), obs_emb], dim=-1)         # (B, G)
        h = x.transpose(1, 2)                                                          # (B, A, H)
        skips: List[torch.Tensor] = []
        for i, (res1, res2) in enumerate(self.down):
            h = self._res(res2, self._res(res1, h, g), g)                              # (B, d_i, L_i)
            if i < len(self.downsample):
                skips.append(h)
                h = self.downsample[i](h)                                              # (B, d_i, ceil(L_i/2))
        for res in self.mid:
            h = self._res(res, h, g)                                                   # (B, d_last, L_last)
        for up, (res1, res2) in zip(self.upsample, self.up):
            skip = skips.pop()                                                         # (B, d_i, L_i)
            h = up(h)[..., :skip.shape[-1]]                                            # (B, d_{i+1}, L_i)
            h = torch.cat([h, skip], dim=1)                                            # (B, d_{i+1} + d_i, L_i)
            h = self._res(res2, self._res(res1, h, g), g)                              # (B, d_i, L_i)
        return self.final(h).transpose(1, 2)                                           # (B, H, A)

    def forward(self, x: torch.Tensor, t: Union[torch.Tensor, int, float], cond: torch.Tensor,
                state: torch.Tensor) -> torch.Tensor:
        """x (B, H, A), t scalar or (B,), cond (B, D_vlm), state (B, D_state) -> (B, H, A)."""
        return self.forward_embedded(x, t, self.embed_condition(cond, state))          # (B, H, A)
