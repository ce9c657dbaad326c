"""Pure image preprocessing shared by training (the dataset) and deployment (the runtime).

Both paths call these functions so a frame is turned into model input identically:

* colour images: uint8 BGR ``(..., H, W, 3)`` -> float32 ``(..., 3, h, w)`` in [0, 1], still **BGR**,
  resized bilinearly (``align_corners=False``, no antialiasing -- exactly ``torch.nn.functional
  .interpolate``, which is what runs here);
* head image + mask: uint8 ``(..., H, W, 4)`` -> float32 ``(..., 4, h, w)``; channels 0-2 as above,
  channel 3 is the target mask: any nonzero value (the store may hold 0/1 or 0/255) counts as 1,
  it is resized with nearest-neighbour and thresholded ``> 0.5`` so it stays exactly {0, 1}.

BGR->RGB, colour jitter and ImageNet normalisation are *not* done here: the policy's observation
encoder does them on the device.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

Size = Union[int, Sequence[int]]


def _as_hw(size: Size) -> tuple[int, int]:
    """Normalise ``size`` (int or (H, W)) to a tuple of two positive ints."""
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        if len(size) != 2:
            raise ValueError(f"image size must be an int or (H, W), got {size!r}")
        h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    return h, w


def _check_image(img: np.ndarray, channels: int, name: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim < 3 or img.shape[-1] != channels:
        raise ValueError(f"{name}: expected a (..., H, W, {channels}) image, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8, got {img.dtype}")
    return img


def _to_nchw(img: np.ndarray) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(..., H, W, C) uint8 array -> contiguous (N, C, H, W) uint8 tensor and the leading shape."""
    lead = img.shape[:-3]
    h, w, c = img.shape[-3:]
    t = torch.from_numpy(np.ascontiguousarray(img).reshape(-1, h, w, c))  # (N, H, W, C)
    return t.permute(0, 3, 1, 2), lead  # (N, C, H, W)


def _resize_bilinear(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) float -> (N, C, h, w); identity (bit-exact) when the size already matches."""
    if tuple(x.shape[-2:]) == hw:
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=False)


def _resize_nearest(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) float -> (N, C, h, w) nearest-neighbour."""
    if tuple(x.shape[-2:]) == hw:
        return x
    return F.interpolate(x, size=hw, mode="nearest")


def bgr_uint8_to_float_chw(img_hwc: np.ndarray, size: Size) -> np.ndarray:
    """Resize a BGR uint8 image to float32 CHW in [0, 1] (channel order kept: BGR).

    Args:
        img_hwc: uint8 array ``(H, W, 3)`` or batched ``(..., H, W, 3)``.
        size: output ``(h, w)`` or an int for a square output.

    Returns:
        float32 array ``(3, h, w)`` (or ``(..., 3, h, w)``).
    """
    img = _check_image(img_hwc, 3, "bgr_uint8_to_float_chw")
    hw = _as_hw(size)
    x, lead = _to_nchw(img)                        # (N, 3, H, W) uint8
    x = x.to(torch.float32) / 255.0                # (N, 3, H, W) in [0, 1]
    x = _resize_bilinear(x, hw)                    # (N, 3, h, w)
    return x.reshape(*lead, 3, *hw).contiguous().numpy()


def mask_uint8_to_float(mask_hw: np.ndarray, size: Size) -> np.ndarray:
    """Binary-ise (nonzero -> 1) and resize a uint8 mask ``(..., H, W)`` to float32 ``(..., h, w)``."""
    m = np.asarray(mask_hw)
    if m.ndim < 2:
        raise ValueError(f"mask_uint8_to_float: expected a (..., H, W) mask, got shape {m.shape}")
    hw = _as_hw(size)
    lead, (h, w) = m.shape[:-2], m.shape[-2:]
    x = torch.from_numpy(np.ascontiguousarray(m != 0).reshape(-1, 1, h, w)).to(torch.float32)
    x = (_resize_nearest(x, hw) > 0.5).to(torch.float32)  # (N, 1, h, w) in {0, 1}
    return x.reshape(*lead, *hw).contiguous().numpy()


def rgbm_uint8_to_float_chw(img_hwc4: np.ndarray, size: Size) -> np.ndarray:
    """Resize a BGR + mask uint8 image to float32 ``(4, h, w)``: BGR in [0, 1], mask in {0, 1}.

    The mask channel may hold 0/1 or 0/255 (any nonzero value is foreground); it is resized with
    nearest-neighbour then thresholded ``> 0.5``. Accepts ``(H, W, 4)`` or ``(..., H, W, 4)``.
    """
    img = _check_image(img_hwc4, 4, "rgbm_uint8_to_float_chw")
    hw = _as_hw(size)
    x, lead = _to_nchw(img)                                     # (N, 4, H, W) uint8
    bgr = _resize_bilinear(x[:, :3].to(torch.float32) / 255.0, hw)   # (N, 3, h, w)
    mask = _resize_nearest((x[:, 3:] != 0).to(torch.float32), hw)    # (N, 1, h, w)
    mask = (mask > 0.5).to(torch.float32)
    out = torch.cat([bgr, mask], dim=1)                         # (N, 4, h, w)
    return out.reshape(*lead, 4, *hw).contiguous().numpy()


def float_chw_to_bgr_uint8(img_chw: np.ndarray) -> np.ndarray:
    """Inverse helper for visualisation: float ``(C, h, w)`` in [0, 1] -> uint8 ``(h, w, C)``."""
    x = np.asarray(img_chw, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"float_chw_to_bgr_uint8: expected (C, H, W), got shape {x.shape}")
    return np.clip(np.rint(np.moveaxis(x, 0, -1) * 255.0), 0, 255).astype(np.uint8)
