"""The mask ViT's transformer: pre-norm encoder layers with fused attention at inference too.

A drop-in for ``nn.TransformerEncoder(nn.TransformerEncoderLayer(..., activation=GELU,
batch_first=True, norm_first=True, dropout=0))``: the same parameters under the same state-dict
names (``layers.{i}.self_attn.in_proj_weight``, ``.out_proj``, ``linear1``, ``linear2``,
``norm1``, ``norm2``), the same initialisation (one layer built, then deep-copied, as PyTorch
does), the same function. Why it exists: in eval mode without autograd PyTorch's encoder takes
its "fast path", whose CPU attention materialises the (heads, n, n) scores with batched matmuls;
for the paper preset's 1369 tokens with head width 96 that is ~2x slower than
``F.scaled_dot_product_attention`` (see ``benchmarks/controller_speed.py``). Here attention
always goes through :func:`controller.model.diffusion.layers.attention`, fused unless the
layer's ``fused_attn`` flag is off (the straightforward comparison path).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from controller.model.common.linear import linear
from controller.model.diffusion.layers import attention


class MaskTransformerLayer(nn.Module):
    """x + SelfAttn(LN(x)); x + Linear(GELU(Linear(LN(x)))) on (B, n, d) tokens."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int) -> None:
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"mask transformer: d_model {d_model} is not divisible by nhead {nhead}")
        # nn.MultiheadAttention only holds the parameters (in_proj_*, out_proj), as in PyTorch's layer.
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.nhead = nhead
        self.fused_attn = True  # switched by controller.model.diffusion.layers.set_fused_attention
        self.onednn_linear = False  # switched by controller.model.common.linear.set_onednn_linear

    def _self_attention(self, x: torch.Tensor) -> torch.Tensor:
        B, n, d = x.shape
        h = self.nhead
        project = linear if self.onednn_linear else F.linear
        qkv = project(x, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias)  # (B, n, 3d)
        q, k, v = qkv.view(B, n, 3, h, d // h).permute(2, 0, 3, 1, 4)               # 3 x (B, h, n, d/h)
        out = attention(q, k, v, fused=self.fused_attn)                              # (B, h, n, d/h)
        out = out.transpose(1, 2).reshape(B, n, d)
        return self.self_attn.out_proj(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, n, d) -> (B, n, d)."""
        x = x + self._self_attention(self.norm1(x))
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class MaskTransformer(nn.Module):
    """``num_layers`` clones of one :class:`MaskTransformerLayer` (identical initial weights)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, num_layers: int) -> None:
        super().__init__()
        layer = MaskTransformerLayer(d_model, nhead, dim_feedforward)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, n, d) -> (B, n, d)."""
        for layer in self.layers:
            x = layer(x)
        return x
