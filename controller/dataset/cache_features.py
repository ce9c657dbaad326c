"""Frozen-backbone feature cache: precompute DINOv2 patch tokens once, train on them.

The frozen DINOv2 backbones (ViT-B/14 head, ViT-L/14 wrist at 518 px in the paper preset) cost
most of a training step although their output never changes. This module runs them once over every
frame of every episode and stores the tokens; ``GraspDataset(feature_cache_path=...)`` then serves
``obs['head_tokens']`` / ``obs['wrist_tokens']`` and ``ObsEncoder`` skips the backbones.

Usage (same Hydra config and overrides as ``train.py``)::

    python -m controller.dataset.cache_features policy=paper task.dataset_paths=[data/a.zarr] \\
        feature_cache.out=data/a.features.zarr feature_cache.jitter_copies=0 feature_cache.batch_size=8
    python train.py policy=paper task.dataset_paths=[data/a.zarr] feature_cache.path=data/a.features.zarr

``feature_cache.out`` defaults to ``<first dataset path>.features.zarr``. The run shows a tqdm bar,
writes a progress marker after each batch of frames and, when interrupted, resumes where it
stopped (re-running the same command skips finished batches).

Colour jitter cannot be applied to cached tokens. ``jitter_copies=0`` stores one clean copy per
frame (training sees no colour jitter -- cheaper, but loses that augmentation);
``jitter_copies=K`` stores K independently jittered copies and the dataset draws one per sample
(K times the disk space and caching time; augmentation limited to K fixed draws per frame).

Store layout (zarr v3, one group per source store ``store_<i>``, in ``dataset_paths`` order)::

    attrs: {version, identity: {head: {...}, wrist: {...}}, jitter_copies, dtype, batch_size, seed}
    store_<i>/head_tokens   (K_steps, copies, n_head, C_head)   float16, one chunk per frame
    store_<i>/wrist_tokens  (K_steps, copies, n_wrist, C_wrist) float16, one chunk per frame
    store_<i>/mask          (K_steps, 1, h, w) uint8 {0, 1}: the resized head target mask
    store_<i>/done          (n_batches,) uint8: progress marker (1 = batch written)

``identity`` records each backbone's model type, image size, feature dim and a SHA-1 of its
weights; the policy refuses a cache whose identity differs from its own backbones
(:func:`check_identity`). Only frozen backbones can be cached.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

VERSION = 1
TOKEN_KEYS = ("head_tokens", "wrist_tokens")


class FeatureCacheError(RuntimeError):
    """A feature cache is missing, incomplete or does not match the policy/dataset."""


# ---------------------------------------------------------------------------- identity
def weights_sha1(module: torch.nn.Module) -> str:
    """SHA-1 over a module's state dict (names, shapes, dtypes and bytes, sorted by name)."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def backbone_identity(encoder) -> dict:
    """Identity of an ObsEncoder's two backbones (what a cache must match)."""
    out = {}
    for part, vit in (("head", encoder.dino_head), ("wrist", encoder.wrist_backbone)):
        out[part] = {"model_type": str(getattr(vit, "default_cfg", {}).get("architecture", type(vit).__name__)),
                     "depth": len(vit.blocks), "image_size": list(encoder.image_size),
                     "grid": list(vit.grid), "feature_dim": int(vit.feature_dim), "weights_sha1": weights_sha1(vit)}
    return out


def check_identity(cached: Mapping, encoder, path: str) -> None:
    """Raise :class:`FeatureCacheError` if the cache was made with other backbones than ``encoder``'s."""
    mine = backbone_identity(encoder)
    for part in ("head", "wrist"):
        c, m = dict(cached.get(part, {})), mine[part]
        diff = [f"{k}: cache {c.get(k)!r} vs policy {m[k]!r}" for k in m if c.get(k) != m[k]]
        if diff:
            raise FeatureCacheError(
                f"feature cache '{path}' was computed with a different {part} backbone ({'; '.join(diff)}). "
                f"Re-run `python -m controller.dataset.cache_features` with this policy's config, or unset "
                f"feature_cache.path to run the backbones.")


def require_frozen(encoder) -> None:
    """Only frozen backbones have fixed outputs that can be cached."""
    trainable = [p for p, f in (("head", encoder.head_frozen), ("wrist", encoder.wrist_frozen)) if not f]
    if trainable:
        raise FeatureCacheError(
            f"the {' and '.join(trainable)} backbone(s) are trainable (frozen: false); their features change "
            f"during training and cannot be cached. Set policy.obs_encoder.{trainable[0]}.frozen=true "
            f"or train without feature_cache.path.")


def open_cache(path: str) -> Any:
    """Open a feature cache read-only, checking it exists and is complete."""
    import zarr
    if not os.path.isdir(path):
        raise FeatureCacheError(f"feature cache '{path}' not found; create it with "
                                f"`python -m controller.dataset.cache_features ... feature_cache.out={path}`")
    root = zarr.open_group(path, mode="r")
    if root.attrs.get("version") != VERSION:
        raise FeatureCacheError(f"'{path}' is not a feature cache of version {VERSION} "
                                f"(attrs: {dict(root.attrs)})")
    for i in range(int(root.attrs["n_stores"])):
        done = np.asarray(root[f"store_{i}/done"][...])
        if not done.all():
            raise FeatureCacheError(f"feature cache '{path}' is incomplete (store_{i}: {int(done.sum())}/"
                                    f"{len(done)} batches written); re-run cache_features to finish it")
    return root


# ---------------------------------------------------------------------------- writing
def _encode(encoder, key: str, frames: torch.Tensor, jitter: bool) -> torch.Tensor:
    """frames (n, C, h, w) float on the device -> backbone tokens (n, tokens, dim)."""
    if key == "head_tokens":
        return encoder.head_rgb_tokens(frames[:, None], training=jitter)
    return encoder.wrist_rgb_tokens(frames[:, None], training=jitter)


def _jitter_seed(seed: int, store: int, batch: int, copy: int) -> int:
    """Deterministic 31-bit seed of one (store, batch, copy) jitter draw."""
    return int(hashlib.sha1(f"{seed},{store},{batch},{copy}".encode()).hexdigest()[:8], 16) & 0x7FFF_FFFF


def _create_or_check(path: str, encoder, dataset, copies: int, dtype: str, batch_size: int, seed: int):
    """Create the store, or reopen it for resuming after checking it was made with the same settings."""
    import zarr
    identity = backbone_identity(encoder)
    sources = [{"path": os.path.abspath(rb.path), "n_steps": int(rb.n_steps),
                "episode_ends": [int(e) for e in rb.episode_ends]} for rb in dataset.replay_buffers]
    settings = {"version": VERSION, "identity": identity, "jitter_copies": copies, "dtype": dtype,
                "batch_size": batch_size, "seed": seed, "n_stores": len(sources),
                "color_jitter": repr(encoder.color_jitter)}
    if os.path.isdir(path):
        root = zarr.open_group(path, mode="r+")
        old = {k: root.attrs.get(k) for k in settings}
        diff = [k for k in settings if old[k] != settings[k]]
        ends_old = [s["episode_ends"] for s in root.attrs.get("sources", [])]
        if diff or ends_old != [s["episode_ends"] for s in sources]:
            raise FeatureCacheError(f"'{path}' exists but was made with other settings "
                                    f"({diff or ['sources']}); delete it or choose another feature_cache.out")
        return root
    root = zarr.open_group(path, mode="w", zarr_format=3)
    h, w = encoder.image_size
    for i, rb in enumerate(dataset.replay_buffers):
        g = root.create_group(f"store_{i}")
        n = int(rb.n_steps)
        for key, part in zip(TOKEN_KEYS, ("head", "wrist")):
            n_tok = identity[part]["grid"][0] * identity[part]["grid"][1]
            shape = (n, max(copies, 1), n_tok, identity[part]["feature_dim"])
            g.create_array(key, shape=shape, chunks=(1, *shape[1:]), dtype=dtype, compressors=None)
        g.create_array("mask", shape=(n, 1, h, w), chunks=(1, 1, h, w), dtype="uint8")
        n_batches = -(-n // batch_size)
        g.create_array("done", shape=(n_batches,), chunks=(max(min(n_batches, 4096), 1),), dtype="uint8",
                       fill_value=0)
    root.attrs.update({**settings, "sources": sources})
    return root


@torch.inference_mode()
def build_cache(encoder, dataset, out: str, jitter_copies: int = 0, dtype: str = "float16",
                batch_size: int = 8, seed: int = 0, device: Optional[str] = None, progress: bool = True) -> str:
    """Write (or finish) the feature cache of every frame of ``dataset``'s stores; returns ``out``.

    Args:
        encoder: the policy's ``ObsEncoder`` (backbones must be frozen).
        dataset: a :class:`GraspDataset` (its replay buffers and image size are used).
        jitter_copies: 0 = one clean copy per frame; K > 0 = K colour-jittered copies.
        batch_size: frames per backbone pass; one progress marker per batch (resume unit).
        seed: jitter seed; batch ``j`` of store ``i``, copy ``c`` is drawn from a generator seeded
            with ``(seed, i, j, c)`` so a resumed run writes the same values as an uninterrupted one.
    """
    from tqdm.auto import tqdm

    from controller.dataset.image_ops import bgr_uint8_to_float_chw, rgbm_uint8_to_float_chw

    require_frozen(encoder)
    copies = int(jitter_copies)
    if copies > 0 and encoder.color_jitter is None:
        raise FeatureCacheError("jitter_copies > 0 but the policy has no color_jitter configured")
    from inference_utils.cli_common import resolve_device  # noqa: PLC0415

    device = torch.device(resolve_device(device or "auto"))  # auto: cuda, then mps, then cpu
    encoder = encoder.to(device).eval()
    root = _create_or_check(out, encoder, dataset, copies, dtype, int(batch_size), int(seed))
    batch_size = int(root.attrs["batch_size"])
    size = encoder.image_size
    total = sum(int(rb.n_steps) for rb in dataset.replay_buffers)
    bar = tqdm(total=total, desc=f"caching features -> {out}", unit="frame", disable=not progress)
    for i, rb in enumerate(dataset.replay_buffers):
        g = root[f"store_{i}"]
        done = np.asarray(g["done"][...])
        for j in range(len(done)):
            a, b = j * batch_size, min((j + 1) * batch_size, int(rb.n_steps))
            if done[j]:
                bar.update(b - a)
                continue
            rgbm = torch.from_numpy(rgbm_uint8_to_float_chw(rb["rgbm"][a:b], size)).to(device)      # (n,4,h,w)
            wrist = torch.from_numpy(bgr_uint8_to_float_chw(rb["right_cam_img"][a:b], size)).to(device)  # (n,3,h,w)
            for key, frames in zip(TOKEN_KEYS, (rgbm, wrist)):
                outs = []
                for c in range(max(copies, 1)):
                    with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG untouched
                        torch.manual_seed(_jitter_seed(seed, i, j, c))
                        outs.append(_encode(encoder, key, frames, jitter=copies > 0))       # (n, tok, dim)
                g[key][a:b] = torch.stack(outs, 1).to("cpu", getattr(torch, dtype)).numpy()  # (n, copies, tok, dim)
            g["mask"][a:b] = (rgbm[:, 3:] > 0.5).to("cpu", torch.uint8).numpy()               # (n, 1, h, w)
            g["done"][j:j + 1] = 1
            bar.update(b - a)
    bar.close()
    return out


# ---------------------------------------------------------------------------- reading
class FeatureCacheReader:
    """Per-store lazy handles on a finished cache (picklable; reopened in each worker process)."""

    def __init__(self, path: str, replay_buffers: Sequence) -> None:
        from controller.dataset.replay_buffer import LazyZarrArray
        root = open_cache(path)
        self.path = path
        self.attrs = dict(root.attrs)
        self.copies = max(int(self.attrs["jitter_copies"]), 1)
        sources = self.attrs["sources"]
        if len(sources) != len(replay_buffers):
            raise FeatureCacheError(f"feature cache '{path}' covers {len(sources)} store(s) but the dataset "
                                    f"has {len(replay_buffers)}; cache the same task.dataset_paths")
        self.arrays = []
        for i, (src, rb) in enumerate(zip(sources, replay_buffers)):
            if src["episode_ends"] != [int(e) for e in rb.episode_ends]:
                raise FeatureCacheError(f"feature cache '{path}' store_{i} was made from '{src['path']}' "
                                        f"whose episodes differ from '{rb.path}'; re-run cache_features")
            arrs = {}
            for key in (*TOKEN_KEYS, "mask"):
                a = root[f"store_{i}/{key}"]
                arrs[key] = LazyZarrArray(path, f"store_{i}/{key}", a.shape, a.dtype, a.chunks)
            self.arrays.append(arrs)

    def token_shape(self, key: str) -> tuple:
        """(n_tokens, dim) of ``head_tokens`` / ``wrist_tokens``."""
        return tuple(self.arrays[0][key].shape[2:])

    def get(self, b: int, key: str, step: int, copy: int = 0) -> np.ndarray:
        """Tokens (n, C) of one frame and copy, or the mask (1, h, w) float32 for ``key='mask'``."""
        if key == "mask":
            return self.arrays[b]["mask"][step].astype(np.float32)
        return self.arrays[b][key][step][copy]


# ---------------------------------------------------------------------------- CLI
def main(argv: Optional[Sequence[str]] = None) -> str:
    """``python -m controller.dataset.cache_features [hydra overrides]`` (see module docstring)."""
    from hydra import compose, initialize_config_dir

    from controller.common.registry import instantiate
    from omegaconf import OmegaConf

    overrides = list(sys.argv[1:] if argv is None else argv)
    config_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="train_dexgraspvla_controller_workspace", overrides=overrides)
    fc = cfg.feature_cache
    OmegaConf.update(cfg, "feature_cache.path", None)  # build the plain dataset and encoder
    torch.manual_seed(int(cfg.training.seed))          # as the workspace does before building the policy
    encoder = instantiate(cfg.policy.obs_encoder, ("policy",), where="policy.obs_encoder", trusted=True)
    require_frozen(encoder)
    dataset = instantiate(cfg.task.dataset, ("dataset",), where="task.dataset", trusted=True)
    out = fc.out or f"{str(dataset.dataset_paths[0]).rstrip('/')}.features.zarr"
    build_cache(encoder, dataset, out, jitter_copies=int(fc.jitter_copies), dtype=str(fc.dtype),
                batch_size=int(fc.batch_size), seed=int(cfg.training.seed), device=fc.get("device"))
    print(f"feature cache written to {out}; train with feature_cache.path={out}")
    return out


if __name__ == "__main__":
    main()
