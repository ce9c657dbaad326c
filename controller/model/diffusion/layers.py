"""Building blocks of the action DiT: RMSNorm, MLP, self- and cross-attention, timestep embedding.

Parameter names follow the reference (timm ``Attention``/``Mlp``/``RmsNorm``, RDT's
``CrossAttention``) so reference checkpoints load 1:1: ``attn.qkv``, ``attn.q_norm``,
``attn.k_norm``, ``attn.proj``, ``cross_attn.q``, ``cross_attn.kv``, ``ffn.fc1``, ``ffn.fc2``.
Attention runs through ``F.scaled_dot_product_attention`` (fused kernels where available) unless a
module's ``fused_attn`` is False: then the straightforward ``softmax(q k^T / sqrt(d)) v`` is
materialised (the comparison path of ``benchmarks/controller_speed.py``; the same attribute name as
timm's ``Attention``, so :func:`set_fused_attention` switches the DINOv2 backbones too).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
              dropout_p: float = 0.0, fused: bool = True) -> torch.Tensor:
    """Scaled dot-product attention: q (B, h, T, d), k, v (B, h, L, d) -> (B, h, T, d).

    ``attn_mask``: bool, broadcastable to (B, h, T, L), True = attend. ``fused=False`` computes the
    (B, h, T, L) weights explicitly (same result up to float rounding).
    """
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)                    # (B, h, T, L)
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf"))
    weights = logits.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v


def attention_keys_transposed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inference attention against keys stored transposed: q (B, h, T, d); k (B, h, L, d) whose
    memory is (B, h, d, L) (``k.stride(-2) == 1``, the condition cache's layout); v (B, h, L, d).

    Why not ``F.scaled_dot_product_attention`` here: with few queries (the 64 action tokens) against
    many keys (the ~2,740 condition tokens), the two plain batched matmuls on keys already laid out
    as the first one wants them beat the fused CPU kernel, which additionally copies keys that are
    not contiguous in d (measured, one thread, (1, 8, 64, 128) against 2,740: 10.5 vs 11.7 ms).
    Same result up to float rounding (~3e-7).
    """
    logits = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))       # (B, h, T, L)
    torch.softmax(logits, -1, out=logits)                                      # in place: no 2nd buffer
    return torch.matmul(logits, v)                                             # (B, h, T, d)


def set_fused_attention(module: nn.Module, enabled: bool) -> int:
    """Switch every attention layer under ``module`` that has a ``fused_attn`` flag (this file's
    layers, the mask ViT's and timm's ViT ``Attention``) to fused SDPA (True) or explicit math (False).

    Returns the number of layers switched (the mask ViT's layers included).
    """
    n = 0
    for m in module.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = bool(enabled)
            n += 1
    return n


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale (no centring, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # weight in the input's dtype: under bf16 autocast the fused kernel needs matching dtypes
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class Mlp(nn.Module):
    """fc1 -> tanh-GELU -> fc2 (hidden width = input width in the paper's DiT)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the action tokens with QK RMSNorm."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} must be divisible by n_head {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused_attn = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D)."""
        B, T_, D = x.shape
        qkv = self.qkv(x).reshape(B, T_, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                              # each (B, h, T, d)
        q, k = self.q_norm(q), self.k_norm(k)
        y = attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0, fused=self.fused_attn)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(B, T_, D)))


class CrossAttention(nn.Module):
    """Action tokens attend to the condition tokens (observation + diffusion time), QK RMSNorm.

    ``forward`` takes keys/values from :meth:`project_kv` (k, v each (B, h, L, d), k-normed): the
    condition does not change across denoising steps, so the policy computes them once per chunk
    (and once per observation when it denoises several noise draws of it).
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} must be divisible by n_head {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(dim, 2 * dim, bias=True)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused_attn = True

    def project_kv(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """c: (B, L, D) -> k, v each (B, h, L, d) (k normalised)."""
        B, L, _ = c.shape
        k, v = self.kv(c).reshape(B, L, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.k_norm(k), v

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                attn_mask: Optional[torch.Tensor] = None,
                capture: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x: (B, T, D); k, v: (B, h, L, d) or (B / g, h, L, d); attn_mask: bool (B or B / g, 1, 1, L),
        True = attend.

        With B / g keys/values, each row serves g consecutive samples of ``x`` (g noise draws of one
        observation): their queries are stacked along the token axis, (B / g, h, g * T, d), so the
        shared keys/values are read once instead of copied g times. Same result per sample.

        Returns the output (B, T, D) and, when ``capture``, the attention weights of the first
        action token over the L condition tokens, (B, h, L) in float32.
        """
        B, T_, D = x.shape
        kv_batch = k.shape[0]
        if B % kv_batch:
            raise ValueError(f"cross-attention: {B} query samples cannot share keys/values of batch {kv_batch}")
        g = B // kv_batch
        q = self.q_norm(self.q(x).reshape(B, T_, self.num_heads, self.head_dim).transpose(1, 2))  # (B,h,T,d)
        if attn_mask is not None and attn_mask.shape[0] not in (1, kv_batch):
            raise ValueError("cross-attention with shared keys/values needs one mask per key/value row")
        # the g samples sharing a key/value row stack their queries: (B/g, h, g*T, d); views for g = 1
        qg = q.reshape(kv_batch, g, self.num_heads, T_, self.head_dim).transpose(1, 2)
        qg = qg.reshape(kv_batch, self.num_heads, g * T_, self.head_dim)
        if self.fused_attn and not self.training and attn_mask is None and k.stride(-2) == 1 and k.shape[-2] > 1:
            y = attention_keys_transposed(qg, k, v)        # keys from the condition cache: (B/g,h,gT,d)
        else:
            y = attention(qg, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0,
                          fused=self.fused_attn)                                                 # (B/g,h,gT,d)
        y = y.reshape(kv_batch, self.num_heads, g, T_, self.head_dim).permute(0, 2, 3, 1, 4)
        y = y.reshape(B, T_, D)                                                                     # (B,T,D)
        weights = None
        if capture:
            with torch.no_grad():  # only the first action token: (B, h, 1, d) @ (B, h, d, L)
                kf = k.float() if g == 1 else k.float().repeat_interleave(g, dim=0)
                logits = (q[:, :, :1].float() @ kf.transpose(-2, -1)) * self.scale
                if attn_mask is not None:
                    m = attn_mask if g == 1 or attn_mask.shape[0] == 1 else attn_mask.repeat_interleave(g, dim=0)
                    logits = logits.masked_fill(~m, float("-inf"))
                weights = logits.softmax(-1)[:, :, 0]  # (B, h, L)
        return self.proj_drop(self.proj(y)), weights


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the diffusion timestep (256 frequencies) followed by an MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """t: (B,) -> (B, dim) as [cos, sin] of t * geometric frequencies."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) -> (B, hidden)."""
        emb = self.sinusoidal(t, self.frequency_embedding_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))
