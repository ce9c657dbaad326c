"""Batched colour jitter with independent random factors per sample.

torchvision's ``ColorJitter`` draws one set of factors per call, so jittering a batch either
gives every sample the same colours or needs a Python loop over samples (slow on CPU, mostly the
HSV round trip of the hue step). This module applies brightness, contrast, saturation and hue
changes with per-sample factors as whole-batch tensor operations:

* brightness: ``x * b``;  contrast: blend with the image's mean grey level;
* saturation: blend with the per-pixel grey value (ITU-R 601 luma, as torchvision);
* hue: rotation of the chroma plane in YIQ space by ``2 pi h`` (a linear approximation of
  torchvision's HSV hue shift, exact for grey pixels and close for saturated colours).

Factor ranges follow torchvision: brightness/contrast/saturation ``s`` draws from
``[max(0, 1 - s), 1 + s]``; hue ``h`` from ``[-h, h]`` with ``h <= 0.5``. Output is clamped to [0, 1].
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

_LUMA = (0.299, 0.587, 0.114)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


class BatchColorJitter(nn.Module):
    """Per-sample colour jitter of RGB images ``(N, 3, H, W)`` in [0, 1]."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0) -> None:
        super().__init__()
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if v < 0:
                raise ValueError(f"color_jitter.{name} must be >= 0, got {v}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"color_jitter.hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.register_buffer("rgb2yiq", _RGB2YIQ.clone(), persistent=False)
        self.register_buffer("yiq2rgb", _YIQ2RGB.clone(), persistent=False)

    @staticmethod
    def _factor(n: int, spread: float, like: torch.Tensor) -> torch.Tensor:
        lo, hi = max(0.0, 1.0 - spread), 1.0 + spread
        return torch.empty(n, 1, 1, 1, dtype=like.dtype, device=like.device).uniform_(lo, hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) RGB in [0, 1] -> jittered (N, 3, H, W)."""
        n = x.shape[0]
        luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        if self.brightness:
            x = (x * self._factor(n, self.brightness, x)).clamp(0, 1)
        if self.contrast:
            mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)  # (N, 1, 1, 1)
            c = self._factor(n, self.contrast, x)
            x = (c * x + (1 - c) * mean).clamp(0, 1)
        if self.saturation:
            grey = (x * luma).sum(1, keepdim=True)                               # (N, 1, H, W)
            s = self._factor(n, self.saturation, x)
            x = (s * x + (1 - s) * grey).clamp(0, 1)
        if self.hue:
            theta = torch.empty(n, dtype=x.dtype, device=x.device).uniform_(-self.hue, self.hue) * 2 * math.pi
            cos, sin = torch.cos(theta), torch.sin(theta)
            rot = torch.zeros(n, 3, 3, dtype=x.dtype, device=x.device)           # (N, 3, 3) in YIQ
            rot[:, 0, 0] = 1
            rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
            m = self.yiq2rgb.to(x.dtype) @ rot @ self.rgb2yiq.to(x.dtype)        # (N, 3, 3) RGB -> RGB
            x = torch.einsum("nij,njhw->nihw", m, x).clamp(0, 1)
        return x
