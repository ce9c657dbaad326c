"""Randomly initialised SAM and SAM 2 models, built by the libraries' own builders.

For tests and latency benchmarks only: nothing is downloaded and the weights are random, so the
masks mean nothing — what is exercised is the real code path (pre-processing, the networks at
their real or shrunken sizes, prompt handling, post-processing, memory handling).

* ``random_sam("vit_b")`` — ``segment_anything.sam_model_registry["vit_b"](checkpoint=None)``,
  the full-size ViT-B SAM (91 M parameters);
* ``random_sam("tiny")`` — ``segment_anything.build_sam._build_sam`` with a 2-block, 64-wide
  image encoder (the prompt encoder and mask decoder at their real sizes);
* ``random_sam2("sam2.1_hiera_t")`` — SAM 2.1 Hiera-T from its packaged hydra config;
* ``random_sam2("tiny")`` — the Hiera-T config with a 5-block, 16-wide trunk and one
  memory-attention layer (``SAM2_TINY_OVERRIDES``), optionally at a smaller input size.
"""
from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["SAM_TINY", "SAM2_TINY_OVERRIDES", "random_sam", "random_sam2"]

#: ``_build_sam`` arguments of the tiny SAM (``image_size`` stays SAM's fixed 1024).
SAM_TINY = {"encoder_embed_dim": 64, "encoder_depth": 2, "encoder_num_heads": 2,
            "encoder_global_attn_indexes": [1]}

#: Overrides of ``configs/sam2.1/sam2.1_hiera_t.yaml`` for the tiny SAM 2.
SAM2_TINY_OVERRIDES = [
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "++model.memory_attention.num_layers=1",
    "++model.memory_encoder.fuser.num_layers=1",
]


def random_sam(kind: str = "tiny", seed: int = 0):
    """A ``segment_anything`` ``Sam`` with random weights: ``tiny`` or ``vit_b``/``vit_l``/``vit_h``."""
    import torch
    from segment_anything import sam_model_registry
    from segment_anything.build_sam import _build_sam

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "tiny":
            model = _build_sam(checkpoint=None, **SAM_TINY)
        elif kind in sam_model_registry:
            model = sam_model_registry[kind](checkpoint=None)
        else:
            raise ValueError(f"unknown SAM kind {kind!r}: tiny, {', '.join(sam_model_registry)}")
    return model.eval()


def random_sam2(kind: str = "tiny", video: bool = False, seed: int = 0, image_size: Optional[int] = None,
                device: str = "cpu", object_present: bool = True, hydra_overrides: Sequence[str] = ()):
    """A SAM 2 model with random weights via ``build_sam2``/``build_sam2_video_predictor``.

    Args:
        kind: ``tiny`` or a key of :data:`~.sam2_backend.SAM2_MODEL_TYPES`.
        video: build a ``SAM2VideoPredictor`` (for :class:`~.sam2_backend.Sam2Tracker`).
        image_size: input size other than 1024 (a multiple of 128; only the tracker accepts it).
        object_present: bias the decoder's object-score head so that the model reports the object
            as present; a random SAM 2 otherwise often predicts "no object", and every mask is then
            SAM 2's empty placeholder, which would leave nothing to compare.
        hydra_overrides: further config overrides (after the tiny ones).
    """
    import torch

    from .sam2_backend import build_sam2_model

    overrides = list(SAM2_TINY_OVERRIDES) if kind == "tiny" else []
    model_type = "sam2.1_hiera_t" if kind == "tiny" else kind
    if image_size is not None:
        if image_size % 128:
            raise ValueError(f"image_size must be a multiple of 128, got {image_size}")
        feat = image_size // 16
        overrides += [f"++model.image_size={image_size}",
                      f"++model.memory_attention.layer.self_attention.feat_sizes=[{feat},{feat}]",
                      f"++model.memory_attention.layer.cross_attention.feat_sizes=[{feat},{feat}]"]
    overrides += list(hydra_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_sam2_model(model_type, None, device, video=video, hydra_overrides=overrides)
    head = getattr(model.sam_mask_decoder, "pred_obj_score_head", None)
    if object_present and head is not None:
        last = head.layers[-1] if hasattr(head, "layers") else head
        with torch.no_grad():
            last.bias.fill_(10.0)
    return model
