"""Frozen DINOv2 backbones built with timm, loaded only from local files.

The paper uses DINOv2 ViT-B/14 for the head camera and ViT-L/14 for the wrist camera, frozen, and
takes the final-layer patch tokens (after the last LayerNorm, class token dropped). This module
builds those networks with ``timm`` (``vit_{small,base,large,giant}_patch14_dinov2``) at any image
size divisible by 14 and never touches the network: weights come only from ``local_weights_path``.
Both the official DINOv2 ``.pth`` key layout (``mask_token``, ``ls1.gamma``, ``w12``/``w3``
SwiGLU) and timm's own layout are accepted; positional embeddings are resampled to the requested
image size. A key mismatch raises :class:`BackboneWeightsError` listing missing/unexpected keys.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

#: Accepted model names -> (timm name, feature dim). Both the reference's hub names and timm's.
BACKBONES = {
    "dinov2_vits14": ("vit_small_patch14_dinov2", 384),
    "dinov2_vitb14": ("vit_base_patch14_dinov2", 768),
    "dinov2_vitl14": ("vit_large_patch14_dinov2", 1024),
    "dinov2_vitg14": ("vit_giant_patch14_dinov2", 1536),
}
for _hub, (_timm, _dim) in list(BACKBONES.items()):
    BACKBONES[_timm] = (_timm, _dim)

PATCH_SIZE = 14


class BackboneWeightsError(RuntimeError):
    """A local weight file is missing, unreadable or does not match the backbone."""


def feature_dim_of(model_type: str) -> int:
    """Token feature dimension of a DINOv2 backbone name."""
    if model_type not in BACKBONES:
        raise ValueError(f"unknown backbone model_type '{model_type}'; expected one of {sorted(BACKBONES)}")
    return BACKBONES[model_type][1]


def _load_state_dict_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise BackboneWeightsError(
            f"backbone weights not found at '{path}'. Download the official DINOv2 weights "
            f"(e.g. dinov2_vitb14_pretrain.pth) on a machine with network access and set "
            f"local_weights_path to the file; nothing is downloaded at run time.")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report any unpickling/format error clearly
        raise BackboneWeightsError(f"could not read backbone weights '{path}' as a tensor-only "
                                   f"checkpoint (weights_only=True): {exc}") from exc
    if isinstance(sd, dict):
        for key in ("model", "state_dict", "teacher"):
            if key in sd and isinstance(sd[key], dict):
                sd = sd[key]
    if not isinstance(sd, dict):
        raise BackboneWeightsError(f"'{path}' does not contain a state dict (got {type(sd).__name__})")
    return sd


def _unchunk_blocks(sd: dict) -> dict:
    """Official DINOv2 checkpoints trained with block chunks name blocks 'blocks.C.N.'; flatten."""
    import re
    pat = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.*)$")
    if not any(pat.match(k) for k in sd):
        return sd
    out = {}
    for k, v in sd.items():
        m = pat.match(k)
        out[f"blocks.{m.group(2)}.{m.group(3)}" if m else k] = v
    return out


def load_backbone_weights(model: nn.Module, path: str) -> None:
    """Load official-DINOv2 or timm-format weights from ``path`` into a timm ViT, strictly."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = _unchunk_blocks(_load_state_dict_file(path))
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
    try:
        sd = checkpoint_filter_fn(sd, model)
    except Exception as exc:  # noqa: BLE001
        raise BackboneWeightsError(f"'{path}': could not convert weights for {type(model).__name__}: {exc}") from exc
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        def fmt(keys):
            return ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
        detail = []
        if missing:
            detail.append(f"missing keys: {fmt(missing)}")
        if unexpected:
            detail.append(f"unexpected keys: {fmt(unexpected)}")
        if wrong:
            detail.append("shape mismatch: " + fmt([f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
                                                      for k in wrong]))
        raise BackboneWeightsError(f"'{path}' does not match the backbone: " + "; ".join(detail))
    model.load_state_dict(sd, strict=True)
    logger.info("loaded backbone weights from %s", path)


def build_dino_backbone(model_type: str, image_size: int | tuple[int, int] = 518,
                        local_weights_path: Optional[str] = None, frozen: bool = True,
                        depth: Optional[int] = None, embed_dim: Optional[int] = None,
                        num_heads: Optional[int] = None) -> nn.Module:
    """Build a timm DINOv2 ViT (state-dict names as the official hub model's, minus mask_token).

    Args:
        model_type: ``dinov2_vit{s,b,l,g}14`` or the timm name.
        image_size: input size (int or (H, W)); each side must be divisible by 14.
        local_weights_path: file with pretrained weights, or None for random initialisation
            (tests, or a backbone trained from scratch).
        frozen: freeze the parameters (the caller keeps the module in eval mode).
        depth / embed_dim / num_heads: optional architecture overrides (tiny test presets).

    The returned module carries ``feature_dim`` and ``grid`` ((H/14, W/14)) attributes.
    """
    import timm

    if model_type not in BACKBONES:
        raise ValueError(f"unknown backbone model_type '{model_type}'; expected one of {sorted(BACKBONES)}")
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if h % PATCH_SIZE or w % PATCH_SIZE:
        raise ValueError(f"image_size {h}x{w} must be divisible by the patch size {PATCH_SIZE}")
    kwargs = {}
    if depth is not None:
        kwargs["depth"] = int(depth)
    if embed_dim is not None:
        kwargs["embed_dim"] = int(embed_dim)
    if num_heads is not None:
        kwargs["num_heads"] = int(num_heads)
    vit = timm.create_model(BACKBONES[model_type][0], pretrained=False, img_size=(h, w),
                            num_classes=0, **kwargs)
    if local_weights_path:
        load_backbone_weights(vit, str(local_weights_path))
    vit.feature_dim = int(vit.embed_dim)
    vit.grid = (h // PATCH_SIZE, w // PATCH_SIZE)
    if frozen:
        vit.requires_grad_(False)
        vit.eval()
    return vit


def patch_tokens(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Final-layer patch tokens of a timm ViT.

    x: (N, 3, H, W) ImageNet-normalised RGB -> (N, gh*gw, C), after the final LayerNorm, prefix
    (class/register) tokens removed -- the same tensor as DINOv2's
    ``get_intermediate_layers(x, n=1)[0]``.
    """
    feats = vit.forward_features(x)  # (N, prefix + gh*gw, C)
    return feats[:, vit.num_prefix_tokens:]
