"""Observation encoder: head RGB + target mask, wrist RGB and robot state -> condition tokens.

Architecture (DESIGN.md section 2, paper preset)::

    head  rgb  (B,T,3,H,W) -> DINOv2 ViT-B/14 (frozen) -> (B*T, 1369, 768) --+
    head  mask (B,T,1,H,W) -> mask ViT (14x14 conv, LN, 4 layers) -> (B*T, 1369, 768) --+-> concat
                                             head_net MLP 1536 -> 1024 --> (B, T*1369, 1024)
    wrist rgb  (B,T,3,H,W) -> DINOv2 ViT-L/14 (frozen) -> wrist_net MLP 1024 -> 1024 -> (B, T*1369, 1024)
    state      (B,T,13)    -> state_net MLP 13 -> 256 -> 1024                      -> (B, T, 1024)
    condition = concat along tokens -> (B, T*(1369+1369+1), 1024)

Optional (``mask_geometry=True``, off in the paper preset): the mask's geometry -- presence,
centroid, size, orientation and spread (:func:`mask_geometry`, 8 numbers) -- goes through a small
MLP whose last layer starts at zero and is added to the state token. It makes the target's
location explicit for models trained from scratch on little data (the ``small`` CPU preset).

Images arrive as float [0, 1] in **BGR** order (as the robot cameras deliver and the dataset
stores them); the encoder converts to RGB, applies colour jitter when training and ImageNet
normalisation. State-dict names follow the reference (``dino_head``, ``dino_wrist``,
``mask_process_net.patch_embed/transformer``, ``head_net``, ``wrist_net``, ``state_net``).
"""
from __future__ import annotations

import logging
from typing import Mapping, Optional

import torch
import torch.nn as nn

from controller.common.shape_meta import image_size_of, state_dim_of, validate_shape_meta
from controller.model.vision.color_jitter import BatchColorJitter
from controller.model.vision.mask_transformer import MaskTransformer
from controller.model.vision.backbones import PATCH_SIZE, build_dino_backbone, feature_dim_of, patch_tokens

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Transpose12(nn.Module):
    """(B, C, N) -> (B, N, C); parameter-free (keeps the reference's Sequential indices)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


GEOMETRY_DIM = 8


def mask_geometry(mask: torch.Tensor) -> torch.Tensor:
    """Target-mask geometry: mask (N, 1, H, W) in [0, 1] -> (N, 8) features.

    ``[present, cx, cy, 4*sqrt(area fraction), cos 2theta, sin 2theta, 4*sigma_major, 4*sigma_minor]``
    with coordinates in [-1, 1] (x right, y down), theta the principal-axis angle and sigma the
    standard deviations along the principal axes; all zeros for an empty mask.
    """
    m = (mask[:, 0] > 0.5).to(torch.float32)                                  # (N, H, W)
    n, h, w = m.shape
    ys = torch.linspace(-1.0, 1.0, h, device=m.device).view(1, h, 1)
    xs = torch.linspace(-1.0, 1.0, w, device=m.device).view(1, 1, w)
    area = m.sum(dim=(1, 2))                                                  # (N,)
    a = area.clamp_min(1.0)
    cx = (m * xs).sum(dim=(1, 2)) / a
    cy = (m * ys).sum(dim=(1, 2)) / a
    dx, dy = xs - cx.view(n, 1, 1), ys - cy.view(n, 1, 1)                      # (N, 1, W), (N, H, 1)
    cxx = (m * dx * dx).sum(dim=(1, 2)) / a
    cyy = (m * dy * dy).sum(dim=(1, 2)) / a
    cxy = (m * dx * dy).sum(dim=(1, 2)) / a
    root = torch.sqrt((cxx - cyy) ** 2 + 4 * cxy ** 2)
    safe = root.clamp_min(1e-8)
    cos2 = torch.where(root > 1e-8, (cxx - cyy) / safe, torch.zeros_like(root))
    sin2 = torch.where(root > 1e-8, 2 * cxy / safe, torch.zeros_like(root))
    major = torch.sqrt(((cxx + cyy + root) / 2).clamp_min(0.0))
    minor = torch.sqrt(((cxx + cyy - root) / 2).clamp_min(0.0))
    present = (area > 0).to(torch.float32)
    feats = torch.stack([present, cx, cy, 4 * torch.sqrt(area / (h * w)), cos2, sin2, 4 * major, 4 * minor], dim=1)
    return feats * present.view(n, 1)                                         # (N, 8)


def check_shareable(head: Mapping, wrist: Mapping) -> None:
    """Raise ``ValueError`` unless the head and wrist backbone configs describe one and the same ViT."""
    head, wrist = dict(head), dict(wrist)
    differ = sorted(k for k in set(head) | set(wrist) if head.get(k) != wrist.get(k))
    if differ:
        raise ValueError(
            "obs_encoder.share_backbone=true needs identical head and wrist backbone configs; they differ in "
            + ", ".join(f"{k} (head {head.get(k)!r}, wrist {wrist.get(k)!r})" for k in differ))


def unshared_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict:
    """A ``share_backbone`` state dict for the two-backbone encoder: ``{prefix}dino_head.*`` also
    under ``{prefix}dino_wrist.*`` (``prefix``: where the encoder sits, e.g. ``"obs_encoder."``)."""
    head, wrist = prefix + "dino_head.", prefix + "dino_wrist."
    out = dict(state_dict)
    out.update({wrist + k[len(head):]: v for k, v in state_dict.items() if k.startswith(head)})
    return out


def _fusion_mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Linear, LayerNorm, GELU, Dropout, Linear, LayerNorm (indices 0..5 as in the reference)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
        nn.Linear(hidden, out_dim), nn.LayerNorm(out_dim))


class ObsEncoder(nn.Module):
    """Encode one observation dict into condition tokens for the action DiT.

    Args:
        shape_meta: the data contract (image size and state dim are read from it).
        head / wrist: backbone settings: ``model_type``, ``local_weights_path``, ``frozen``
            (default True) and optional ``depth``/``embed_dim``/``num_heads`` overrides.
        feature_dim: token width; default ``max(head_dim, wrist_dim)`` like the reference.
        mask_layers / mask_heads / mask_mlp_ratio: the trainable mask ViT.
        state_hidden: hidden width of the state MLP (256).
        dropout: dropout inside the fusion MLPs (0.1).
        color_jitter: ``{brightness, contrast, saturation, hue}`` or None to disable.
        feature_cache_path: a backbone-token cache the training data comes from (see
            :mod:`controller.dataset.cache_features`). Refused at build time if a backbone is
            trainable; checked against these backbones (model, image size, weight hash) the first
            time cached tokens are fed (i.e. at the first training step, after any checkpoint load).
        mask_geometry: add the mask's geometry (:func:`mask_geometry`) to the state token.
        share_backbone: one ViT for both cameras (``dino_head``; no ``dino_wrist`` weights): the
            head and wrist settings must be identical, and both images go through it in one batch.
    """

    def __init__(self, shape_meta: Mapping, head: Mapping, wrist: Mapping,
                 feature_dim: Optional[int] = None, mask_layers: int = 4, mask_heads: int = 8,
                 mask_mlp_ratio: float = 4.0, state_hidden: int = 256, dropout: float = 0.1,
                 color_jitter: Optional[Mapping] = None, feature_cache_path: Optional[str] = None,
                 mask_geometry: bool = False, share_backbone: bool = False) -> None:
        super().__init__()
        self.shape_meta = validate_shape_meta(shape_meta, "obs_encoder.shape_meta")
        self.image_size = image_size_of(self.shape_meta)
        self.state_dim = state_dim_of(self.shape_meta)
        self.n_obs_steps = int(self.shape_meta["obs"]["rgbm"].get("horizon", 1))

        def backbone(cfg: Mapping) -> nn.Module:
            cfg = dict(cfg)
            return build_dino_backbone(
                cfg["model_type"], self.image_size, cfg.get("local_weights_path"),
                frozen=cfg.get("frozen", True), depth=cfg.get("depth"),
                embed_dim=cfg.get("embed_dim"), num_heads=cfg.get("num_heads"))

        self.share_backbone = bool(share_backbone)
        if self.share_backbone:
            check_shareable(head, wrist)  # before building anything
        self.dino_head = backbone(head)
        if not self.share_backbone:
            self.dino_wrist = backbone(wrist)
        self.head_frozen = bool(dict(head).get("frozen", True))
        self.wrist_frozen = bool(dict(wrist).get("frozen", True))
        head_dim = self.dino_head.feature_dim
        wrist_dim = self.wrist_backbone.feature_dim
        self.feature_dim = int(feature_dim or max(head_dim, wrist_dim))
        self.grid = self.dino_head.grid

        mlp_dim = int(head_dim * mask_mlp_ratio)
        self.mask_process_net = nn.ModuleDict({
            "patch_embed": nn.Sequential(
                nn.Conv2d(1, head_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE),
                nn.Flatten(2),            # (N, C, gh*gw)
                _Transpose12(),           # (N, gh*gw, C)
                nn.LayerNorm(head_dim)),
            "transformer": MaskTransformer(head_dim, mask_heads, mlp_dim, mask_layers),
        })
        self.head_net = _fusion_mlp(2 * head_dim, self.feature_dim, self.feature_dim, dropout)
        self.wrist_net = _fusion_mlp(wrist_dim, self.feature_dim, self.feature_dim, dropout)
        self.state_net = _fusion_mlp(self.state_dim, state_hidden, self.feature_dim, dropout)
        self.use_mask_geometry = bool(mask_geometry)
        if self.use_mask_geometry:
            self.mask_geometry_net = nn.Sequential(
                nn.Linear(GEOMETRY_DIM, state_hidden), nn.LayerNorm(state_hidden), nn.GELU(),
                nn.Linear(state_hidden, self.feature_dim))
            nn.init.zeros_(self.mask_geometry_net[3].weight)  # starts as a no-op (fine-tuning keeps the function)
            nn.init.zeros_(self.mask_geometry_net[3].bias)

        self.color_jitter = BatchColorJitter(**dict(color_jitter)) if color_jitter else None
        self.register_buffer("img_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("img_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        n_tok = self.grid[0] * self.grid[1]
        wrist_tok = self.wrist_backbone.grid[0] * self.wrist_backbone.grid[1]
        #: condition token counts per part: head patches, wrist patches, state
        self.part_lengths = [self.n_obs_steps * n_tok, self.n_obs_steps * wrist_tok, self.n_obs_steps]
        self.part_names = ["head", "wrist", "state"]
        logger.info("obs encoder: %d trainable parameters",
                    sum(p.numel() for p in self.parameters() if p.requires_grad))
        self.feature_cache_path = str(feature_cache_path) if feature_cache_path else None
        self._cache_verified = False
        if self.feature_cache_path:
            from controller.dataset.cache_features import require_frozen
            require_frozen(self)

    def verify_feature_cache(self, path: str) -> None:
        """Raise ``FeatureCacheError`` unless ``path`` holds tokens of exactly these frozen backbones."""
        from controller.dataset.cache_features import check_identity, open_cache, require_frozen
        require_frozen(self)
        check_identity(open_cache(path).attrs["identity"], self, path)

    # ------------------------------------------------------------------ helpers
    def train(self, mode: bool = True) -> "ObsEncoder":
        """Frozen backbones stay in eval mode whatever the parent's mode."""
        super().train(mode)
        if self.head_frozen:
            self.dino_head.eval()
        if self.wrist_frozen:
            self.wrist_backbone.eval()
        return self

    @property
    def wrist_backbone(self) -> nn.Module:
        """The wrist camera's ViT: ``dino_wrist``, or ``dino_head`` itself with ``share_backbone``."""
        return self.dino_head if self.share_backbone else self.dino_wrist

    @property
    def num_tokens(self) -> int:
        return sum(self.part_lengths)

    def _prep_rgb(self, bgr: torch.Tensor, jitter: bool) -> torch.Tensor:
        """bgr: (N, 3, H, W) in [0, 1] -> ImageNet-normalised RGB (N, 3, H, W)."""
        rgb = bgr.flip(1)  # BGR -> RGB
        if jitter and self.color_jitter is not None:
            rgb = self.color_jitter(rgb)  # independent random factors per sample, batched
        return (rgb - self.img_mean.to(rgb.dtype)) / self.img_std.to(rgb.dtype)

    def _backbone(self, vit: nn.Module, frozen: bool, x: torch.Tensor) -> torch.Tensor:
        if frozen:
            with torch.no_grad():
                return patch_tokens(vit, x)
        return patch_tokens(vit, x)

    # ------------------------------------------------------------------ parts
    def head_rgb_tokens(self, rgbm: torch.Tensor, training: bool) -> torch.Tensor:
        """rgbm: (B, T, 4, H, W) -> DINOv2 tokens (B*T, n, C_head) of the head RGB."""
        x = rgbm[:, :, :3].flatten(0, 1)  # (B*T, 3, H, W)
        return self._backbone(self.dino_head, self.head_frozen, self._prep_rgb(x, training))

    def wrist_rgb_tokens(self, wrist: torch.Tensor, training: bool) -> torch.Tensor:
        """wrist: (B, T, 3, H, W) -> DINOv2 tokens (B*T, n, C_wrist)."""
        x = wrist.flatten(0, 1)
        return self._backbone(self.wrist_backbone, self.wrist_frozen, self._prep_rgb(x, training))

    def shared_rgb_tokens(self, rgbm: torch.Tensor, wrist: torch.Tensor, training: bool):
        """Head and wrist RGB through the one shared ViT in a single batch (``share_backbone``).

        rgbm: (B, T, 4, H, W), wrist: (B, T, 3, H, W) -> (head (B*T, n, C), wrist (B*T, n, C)),
        the same tokens as :meth:`head_rgb_tokens` and :meth:`wrist_rgb_tokens` give one by one.
        """
        x = torch.cat([rgbm[:, :, :3].flatten(0, 1), wrist.flatten(0, 1)])  # (2*B*T, 3, H, W)
        tokens = self._backbone(self.dino_head, self.head_frozen, self._prep_rgb(x, training))
        return tokens.chunk(2)

    def fuse_head(self, rgb_tokens: torch.Tensor, rgbm: torch.Tensor) -> torch.Tensor:
        """Fuse head RGB tokens (B*T, n, C) with the mask encoding -> (B, T*n, D)."""
        B, T_ = rgbm.shape[:2]
        mask = rgbm[:, :, -1:].flatten(0, 1)  # (B*T, 1, H, W): channel 3 of rgbm, or a mask-only rgbm
        m = self.mask_process_net["patch_embed"](mask)            # (B*T, n, C)
        m = self.mask_process_net["transformer"](m)               # (B*T, n, C)
        fused = self.head_net(torch.cat([rgb_tokens.to(m.dtype), m], dim=-1))  # (B*T, n, D)
        return fused.reshape(B, T_ * fused.shape[1], fused.shape[-1])

    def fuse_wrist(self, rgb_tokens: torch.Tensor, batch: int) -> torch.Tensor:
        """Wrist tokens (B*T, n, C) -> (B, T*n, D)."""
        w = self.wrist_net(rgb_tokens)
        return w.reshape(batch, -1, w.shape[-1])

    def check_cached_obs(self, obs: Mapping[str, torch.Tensor]) -> int:
        """Validate an observation carrying cached backbone tokens; returns the batch size."""
        from controller.common.shape_meta import ShapeMetaError
        T_, (h, w) = self.n_obs_steps, self.image_size
        want = {"right_state": (T_, self.state_dim)}
        for key, vit in (("head_tokens", self.dino_head), ("wrist_tokens", self.wrist_backbone)):
            if key in obs:
                want[key] = (T_, vit.grid[0] * vit.grid[1], vit.feature_dim)
        if "wrist_tokens" not in obs:
            want["right_cam_img"] = (T_, 3, h, w)
        want["rgbm"] = (T_, 1 if "head_tokens" in obs and obs["rgbm"].shape[2] == 1 else 4, h, w)
        batch = obs["rgbm"].shape[0]
        for key, shape in want.items():
            if key not in obs:
                raise ShapeMetaError(f"policy input: missing key '{key}'")
            got = tuple(obs[key].shape)
            if got != (batch, *shape):
                raise ShapeMetaError(f"policy input.{key}: expected (B, {', '.join(map(str, shape))}), got {got}")
        return int(batch)

    def encode_state(self, state: torch.Tensor) -> torch.Tensor:
        """state: (B, T, S) -> (B, T, D)."""
        return self.state_net(state)

    def forward(self, obs: Mapping[str, torch.Tensor], training: bool = True) -> torch.Tensor:
        """obs: rgbm (B,T,4,H,W), right_cam_img (B,T,3,H,W), right_state (B,T,S) -> (B, N, D).

        If the dict carries precomputed backbone tokens (``head_tokens`` (B,T,n,C_head) and/or
        ``wrist_tokens`` (B,T,n,C_wrist), e.g. from the feature cache) the backbones are skipped;
        with ``head_tokens`` the ``rgbm`` entry may be the mask alone (B,T,1,H,W).
        """
        rgbm = obs["rgbm"]
        B = rgbm.shape[0]
        if rgbm.shape[2] == 1 and "head_tokens" not in obs:
            raise ValueError("obs['rgbm'] holds only the mask (1 channel) but no 'head_tokens' were given")
        if self.feature_cache_path and not self._cache_verified and ("head_tokens" in obs or "wrist_tokens" in obs):
            self.verify_feature_cache(self.feature_cache_path)
            self._cache_verified = True
        if self.share_backbone and "head_tokens" not in obs and "wrist_tokens" not in obs:
            head_rgb, wrist_rgb = self.shared_rgb_tokens(rgbm, obs["right_cam_img"], training)
        else:
            head_rgb = (obs["head_tokens"].flatten(0, 1) if "head_tokens" in obs
                        else self.head_rgb_tokens(rgbm, training))
            wrist_rgb = (obs["wrist_tokens"].flatten(0, 1) if "wrist_tokens" in obs
                         else self.wrist_rgb_tokens(obs["right_cam_img"], training))
        state = self.encode_state(obs["right_state"])        # (B, T, D)
        if self.use_mask_geometry:
            geo = mask_geometry(rgbm[:, :, -1:].flatten(0, 1))  # (B*T, 8)
            state = state + self.mask_geometry_net(geo.to(state.dtype)).view(B, -1, state.shape[-1])
        tokens = [
            self.fuse_head(head_rgb, rgbm),                  # (B, T*n_head, D)
            self.fuse_wrist(wrist_rgb.to(rgbm.dtype), B),    # (B, T*n_wrist, D)
            state,                                           # (B, T, D)
        ]
        return torch.cat(tokens, dim=1)                      # (B, N, D)
