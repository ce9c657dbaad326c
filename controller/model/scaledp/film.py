"""Reasoning injection of DexVLA: FiLM of the action condition by the generated reasoning.

The VLM generates a short sub-step reasoning ("fold the left sleeve"). The hidden states of those
generated tokens, (B, L_r, D_vlm) with a validity mask (B, L_r), are mean-pooled over the valid
tokens and sent through an MLP projector (Linear -> GELU -> Linear); the result modulates the action
condition (B, D_vlm) by FiLM::

    r     = projector(masked_mean(reasoning))    # (B, D_vlm)
    cond' = cond * (1 + scale_fc(r)) + shift_fc(r)

``scale_fc`` and ``shift_fc`` are zero-initialised, so at initialisation ``cond' == cond`` exactly
and a pre-trained action expert is undisturbed when the module is added (stage 2).

Choice made here (not in the reference, which always has reasoning tokens): a sample whose mask has
no valid token, and a call without reasoning (``reasoning=None``), leave the condition unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


def masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the valid tokens.

    x: (B, L, D); mask: (B, L) bool, True = valid token (None: all valid).
    Returns the pooled (B, D) (zeros where a row has no valid token) and ``has_any`` (B,) bool.
    """
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)                # (B, L)
    m = mask.to(x.dtype).unsqueeze(-1)                                                   # (B, L, 1)
    count = m.sum(dim=1)                                                                 # (B, 1)
    pooled = (x * m).sum(dim=1) / count.clamp(min=1.0)                                   # (B, D)
    return pooled, count.squeeze(-1) > 0                                                 # (B, D), (B,)


class FiLM(nn.Module):
    """Feature-wise linear modulation ``x * (1 + scale(c)) + shift(c)`` with zero-initialised maps
    (identity at initialisation)."""

    def __init__(self, feature_dim: int, condition_dim: int) -> None:
        super().__init__()
        self.scale_fc = nn.Linear(condition_dim, feature_dim)
        self.shift_fc = nn.Linear(condition_dim, feature_dim)
        for layer in (self.scale_fc, self.shift_fc):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """x: (B, F), condition: (B, C) -> (B, F)."""
        scale = self.scale_fc(condition)                                                 # (B, F)
        shift = self.shift_fc(condition)                                                 # (B, F)
        return x * (1 + scale) + shift                                                   # (B, F)


class ReasoningFiLM(nn.Module):
    """Pools and projects the reasoning hidden states, then FiLM-modulates the action condition.

    Args:
        cond_dim: width of the action condition that is modulated (D_vlm in DexVLA).
        reasoning_dim: width of the reasoning hidden states (D_vlm as well in DexVLA).
        hidden_dim: hidden width of the projector MLP (default: ``reasoning_dim``, as in DexVLA).
    """

    def __init__(self, cond_dim: int, reasoning_dim: Optional[int] = None,
                 hidden_dim: Optional[int] = None) -> None:
        super().__init__()
        reasoning_dim = reasoning_dim or cond_dim
        hidden_dim = hidden_dim or reasoning_dim
        self.projector = nn.Sequential(nn.Linear(reasoning_dim, hidden_dim), nn.GELU(),
                                       nn.Linear(hidden_dim, cond_dim))
        self.film = FiLM(feature_dim=cond_dim, condition_dim=cond_dim)

    def pool(self, reasoning: torch.Tensor, mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """reasoning (B, L_r, D_r), mask (B, L_r) -> projected (B, D_cond) and ``has_any`` (B,)."""
        pooled, has_any = masked_mean(reasoning, mask)                                   # (B, D_r), (B,)
        return self.projector(pooled), has_any                                           # (B, D_cond), (B,)

    def forward(self, cond: torch.Tensor, reasoning: Optional[torch.Tensor],
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """cond (B, D_cond), reasoning (B, L_r, D_r) or None, mask (B, L_r) bool -> (B, D_cond)."""
        if reasoning is None:
            return cond                                                                  # (B, D_cond)
        r, has_any = self.pool(reasoning.to(cond.dtype), mask)                           # (B, D_cond), (B,)
        out = self.film(cond, r)                                                         # (B, D_cond)
        return torch.where(has_any.unsqueeze(-1), out, cond)                             # (B, D_cond)
