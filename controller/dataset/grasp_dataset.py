"""Torch dataset of (observation, 64-step action chunk) samples from one or more datasets.

Every path is opened through :func:`controller.dataset.formats.open_source`, so one dataset may mix
formats (zarr stores, ACT/DexVLA HDF5 directories, LeRobot v3.0, deployment recordings); foreign
formats are mapped onto our keys by ``dataset_options`` (see :class:`~controller.dataset.formats.SourceOptions`).

Sample layout (T = n_obs_steps, H = horizon, h x w = image size from ``shape_meta``)::

    {'obs': {'rgbm':          float32 (T, 4, h, w)  BGR in [0, 1] + mask in {0, 1},
             'right_cam_img': float32 (T, 3, h, w)  BGR in [0, 1],
             'right_state':   float32 (T, 13)},
     'action':        float32 (H, 13),   past the episode end: the last action repeated
     'action_is_pad': bool    (H,)}      True at those repeated positions

With ``load_text=True`` a sample also has ``'language'`` (str, the episode's instruction, '' if none)
and ``'reasoning'`` (str, the sub-step reasoning at the last observation step, '' if none); the
default collate turns them into lists of str, which ``to_device`` passes through unchanged.

Images are resized here (bilinear; mask nearest then > 0.5, see :mod:`controller.dataset.image_ops`)
but stay BGR and un-normalised: the policy's observation encoder does BGR->RGB, colour jitter and
ImageNet normalisation on the device. The train/val split and ``max_train_episodes`` are drawn over
the episodes of all ``dataset_paths`` together (seeded, by episode).

With ``feature_cache_path`` (a store written by ``python -m controller.dataset.cache_features``) no
image is read: samples carry the frozen backbones' tokens and only the head target mask::

    {'obs': {'rgbm':          float32 (T, 1, h, w)  the target mask only, {0, 1},
             'head_tokens':   float16 (T, n_head, C_head),
             'wrist_tokens':  float16 (T, n_wrist, C_wrist),
             'right_state':   float32 (T, 13)}, 'action': ..., 'action_is_pad': ...}

When the cache holds K > 1 jittered copies per frame, each sample draws one with ``torch.randint``
(deterministic: the training loaders wrap the dataset in ``controller.common.samplers.EpochSeededDataset``,
which seeds each sample's draw from (seed, epoch, index), so a resumed epoch picks the same copies).
"""
from __future__ import annotations

import copy
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from controller.common.shape_meta import ShapeMetaError, validate_shape_meta
from controller.dataset.errors import DatasetError
from controller.dataset.image_ops import bgr_uint8_to_float_chw, rgbm_uint8_to_float_chw
from controller.dataset.formats import SourceOptions, open_source
from controller.dataset.replay_buffer import ZarrReplayBuffer
from controller.dataset.sampler import SequenceSampler, downsample_mask, get_val_mask
from controller.model.common.normalizer import LinearNormalizer

_IMAGE_FNS = {"rgbm": rgbm_uint8_to_float_chw, "right_cam_img": bgr_uint8_to_float_chw}


def _plain_list(x: Any) -> list:
    """str / path / list / tuple / OmegaConf ListConfig -> list of plain python values."""
    if isinstance(x, (str, os.PathLike)):
        return [os.fspath(x)]
    try:
        from omegaconf import OmegaConf
        if OmegaConf.is_config(x):
            x = OmegaConf.to_container(x, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return [os.fspath(v) if isinstance(v, os.PathLike) else v for v in x]


def _source_options(paths: Sequence[str], dataset_options: Any) -> dict[str, SourceOptions]:
    """``dataset_options`` -> path -> SourceOptions: one mapping of option fields for every path, or a
    mapping path -> option fields (paths not listed get the defaults)."""
    try:
        from omegaconf import OmegaConf
        if OmegaConf.is_config(dataset_options):
            dataset_options = OmegaConf.to_container(dataset_options, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if not dataset_options:
        return {p: SourceOptions() for p in paths}
    if not isinstance(dataset_options, Mapping):
        raise DatasetError(f"GraspDataset: dataset_options must be a mapping, got {type(dataset_options).__name__}")
    fields = set(SourceOptions.__dataclass_fields__)
    keys = {str(k) for k in dataset_options}
    if keys <= fields:
        opts = SourceOptions.from_config(dataset_options)
        return {p: opts for p in paths}
    unknown = keys - set(paths)
    if unknown:
        raise DatasetError(f"GraspDataset: dataset_options keys {sorted(unknown)} are neither option names "
                           f"{sorted(fields)} nor dataset paths {list(paths)}")
    return {p: SourceOptions.from_config(dataset_options.get(p)) for p in paths}


class GraspDataset(Dataset):
    """Windows of ``horizon`` steps over the episodes of several datasets (any registered format).

    Args:
        dataset_paths: one path or a list of dataset paths (zarr stores in the reference layout,
            ACT/DexVLA HDF5, LeRobot v3.0, deployment recordings; formats may be mixed).
        shape_meta: the data contract (see ``controller.common.shape_meta``); image sizes, state and
            action widths and (if not given here) horizons are taken from it.
        horizon: action steps per sample (default: ``shape_meta['action']['horizon']``).
        n_obs_steps: observation steps per sample (default: the obs horizon in shape_meta).
        seed: seed of the validation split and of ``max_train_episodes`` subsampling.
        val_ratio: fraction of all episodes (over all paths) held out for validation.
        max_train_episodes: cap on training episodes (over all paths), None for no cap.
        pad_action: windows start at every step, past-the-end actions repeat the last one (True,
            the reference behaviour); False keeps only windows that fit inside the episode.
        image_keys: image observations to load (subset of ``right_cam_img``, ``rgbm``).
        lowdim_keys: low-dim observations to load.
        cache_dir: optional directory for a float16 cache of resized frames (see
            :mod:`controller.dataset.frame_cache`); None reads and resizes every time. Unused with
            ``feature_cache_path``.
        feature_cache_path: optional backbone-token cache (see module docstring); None loads images.
        verify_chunks: at start-up, stat every chunk file of the arrays used (no decoding; cheap)
            and raise :class:`~controller.dataset.errors.ChunkError` naming the array, chunk and
            file if one is missing (zarr would train on it as zeros) or empty/implausibly sized.
            False skips the check. Decode errors during training are named either way.
        dataset_options: how non-zarr datasets map onto our keys: one mapping of
            :class:`~controller.dataset.formats.SourceOptions` fields (``camera_map``, ``state_keys``,
            ``action_keys``, ``mask``, ``mask_key``) for every path, or a mapping path -> such fields.
        load_text: add ``'language'`` and ``'reasoning'`` strings to each sample (see module
            docstring); every episode's text is read once here, so a source whose text is damaged
            or missing where the format requires it (ACT ``language_raw``) fails at start-up.
    """

    def __init__(self, dataset_paths: Any, shape_meta: Mapping, horizon: Optional[int] = None,
                 n_obs_steps: Optional[int] = None, seed: int = 42, val_ratio: float = 0.0,
                 max_train_episodes: Optional[int] = None, pad_action: bool = True,
                 image_keys: Sequence[str] = ("rgbm", "right_cam_img"),
                 lowdim_keys: Sequence[str] = ("right_state",), cache_dir: Optional[str] = None,
                 feature_cache_path: Optional[str] = None, verify_chunks: bool = True,
                 dataset_options: Any = None, load_text: bool = False):
        super().__init__()
        self.shape_meta = validate_shape_meta(shape_meta, where="GraspDataset.shape_meta")
        obs_meta, act_meta = self.shape_meta["obs"], self.shape_meta["action"]
        self.image_keys = [str(k) for k in _plain_list(image_keys)]
        self.lowdim_keys = [str(k) for k in _plain_list(lowdim_keys)]
        for k in self.image_keys + self.lowdim_keys:
            if k not in obs_meta:
                raise ShapeMetaError(f"GraspDataset: obs key '{k}' not in shape_meta.obs ({list(obs_meta)})")
        for k in self.image_keys:
            if k not in _IMAGE_FNS:
                raise ShapeMetaError(f"GraspDataset: image key '{k}' unknown; expected one of {list(_IMAGE_FNS)}")
        meta_h = int(act_meta["horizon"])
        self.horizon = meta_h if horizon is None else int(horizon)
        if self.horizon != meta_h:
            raise ShapeMetaError(f"GraspDataset: horizon={self.horizon} but shape_meta.action.horizon={meta_h}")
        meta_t = int(obs_meta[self.lowdim_keys[0] if self.lowdim_keys else "right_state"].get("horizon", 1))
        self.n_obs_steps = meta_t if n_obs_steps is None else int(n_obs_steps)
        if self.n_obs_steps != meta_t:
            raise ShapeMetaError(f"GraspDataset: n_obs_steps={self.n_obs_steps} but shape_meta obs horizon={meta_t}")
        self.image_sizes = {k: tuple(int(s) for s in obs_meta[k]["shape"][1:]) for k in self.image_keys}
        self.action_dim = int(act_meta["shape"][0])
        self.seed, self.val_ratio, self.pad_action = int(seed), float(val_ratio or 0.0), bool(pad_action)
        self.max_train_episodes = None if max_train_episodes is None else int(max_train_episodes)

        self.dataset_paths = [str(p) for p in _plain_list(dataset_paths)]
        if not self.dataset_paths:
            raise DatasetError("GraspDataset: dataset_paths is empty; expected at least one dataset")
        dims = {k: int(obs_meta[k]["shape"][0]) for k in self.lowdim_keys}
        dims["action"] = self.action_dim
        self.feature_cache_path = str(feature_cache_path) if feature_cache_path else None
        keys = ([] if self.feature_cache_path else self.image_keys) + self.lowdim_keys + ["action"]
        self.verify_chunks = bool(verify_chunks)
        options = _source_options(self.dataset_paths, dataset_options)
        #: one :class:`~controller.dataset.formats.EpisodeSource` per path (name kept from zarr-only days)
        self.replay_buffers = [open_source(p, keys=keys, low_dim_dims=dims, verify=self.verify_chunks,
                                           options=options[p]) for p in self.dataset_paths]
        self.load_text = bool(load_text)
        if self.load_text:
            for rb in self.replay_buffers:   # read (and check) all text now, not inside workers
                for ep, start in enumerate(rb.episode_starts):
                    rb.language(ep)
                    rb.reasoning(int(start))
        if self.feature_cache_path or cache_dir is not None:
            other = [(p, rb.format_name) for p, rb in zip(self.dataset_paths, self.replay_buffers)
                     if not isinstance(rb, ZarrReplayBuffer)]
            if other:
                what = "feature_cache_path" if self.feature_cache_path else "cache_dir"
                raise DatasetError(f"GraspDataset: {what} needs zarr stores, but {other[0][0]} is "
                                   f"'{other[0][1]}'; convert it first (python -m controller.dataset.convert "
                                   f"{other[0][0]} OUT.zarr) or train without {what}")

        # episode-level split over all stores together
        counts = [rb.n_episodes for rb in self.replay_buffers]
        val = get_val_mask(sum(counts), self.val_ratio, seed=self.seed)
        train = downsample_mask(~val, self.max_train_episodes, seed=self.seed)
        bounds = np.cumsum([0] + counts)
        self.train_masks = [train[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        self.val_masks = [val[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        self.is_validation = False
        self._build_index(self.train_masks)

        self.cache = self.features = None
        self._want_shapes = {k: (self.n_obs_steps, *[int(s) for s in obs_meta[k]["shape"]])
                             for k in self.image_keys + self.lowdim_keys}
        if self.feature_cache_path:
            from controller.dataset.cache_features import TOKEN_KEYS, FeatureCacheReader
            self.features = FeatureCacheReader(self.feature_cache_path, self.replay_buffers)
            mask_hw = tuple(self.features.arrays[0]["mask"].shape[2:])
            if mask_hw != self.image_sizes.get("rgbm", mask_hw):
                raise ShapeMetaError(f"feature cache '{self.feature_cache_path}' holds {mask_hw} masks but "
                                     f"shape_meta expects {self.image_sizes['rgbm']} images")
            self._want_shapes = {k: v for k, v in self._want_shapes.items() if k not in self.image_keys}
            self._want_shapes["rgbm"] = (self.n_obs_steps, 1, *mask_hw)
            for k in TOKEN_KEYS:
                self._want_shapes[k] = (self.n_obs_steps, *self.features.token_shape(k))
        elif cache_dir is not None:
            from controller.dataset.frame_cache import FrameCache
            self.cache = FrameCache(cache_dir, self.replay_buffers, self.image_sizes)

    # ------------------------------------------------------------------ indexing
    def _build_index(self, masks: Sequence[np.ndarray]) -> None:
        """One sampler per store and the cumulative window counts used to route an index."""
        self.samplers = [SequenceSampler(rb.episode_ends, self.horizon, self.n_obs_steps, m, self.pad_action)
                         for rb, m in zip(self.replay_buffers, masks)]
        self._cum = np.cumsum([0] + [len(s) for s in self.samplers]).astype(np.int64)

    @property
    def n_episodes(self) -> int:
        """Episodes this split draws from."""
        masks = self.val_masks if self.is_validation else self.train_masks
        return int(sum(m.sum() for m in masks))

    def get_validation_dataset(self) -> "GraspDataset":
        """Same stores, windows from the held-out episodes only (shares the open buffers)."""
        val = copy.copy(self)
        val.is_validation = True
        val._build_index(self.val_masks)
        return val

    def __len__(self) -> int:
        return int(self._cum[-1])

    # ------------------------------------------------------------------ normaliser
    def _train_steps(self, key: str) -> np.ndarray:
        parts = []
        for rb, m in zip(self.replay_buffers, self.train_masks):
            lengths = rb.episode_lengths
            step_mask = np.repeat(m, lengths)            # (K,) True for steps of training episodes
            parts.append(np.asarray(rb[key])[step_mask])
        out = np.concatenate(parts, axis=0)
        if len(out) == 0:
            raise DatasetError(f"{self.dataset_paths}: no training episodes to fit the normaliser "
                               f"on (val_ratio={self.val_ratio}, max_train_episodes={self.max_train_episodes})")
        return out

    def get_all_actions(self) -> torch.Tensor:
        """(N, action_dim) float32 actions of all training episodes."""
        return torch.from_numpy(self._train_steps("action").astype(np.float32))

    def get_normalizer(self, mode: str = "limits", **kwargs: Any) -> LinearNormalizer:
        """Fit 'action' and the low-dim obs (e.g. 'right_state') over all steps of the training
        episodes; 'limits' maps each dimension's range to [-1, 1] (constant dims to 0)."""
        data = {"action": self._train_steps("action")}
        for k in self.lowdim_keys:
            data[k] = self._train_steps(k)
        return LinearNormalizer().fit(data, mode=mode, **kwargs)

    # ------------------------------------------------------------------ samples
    def _locate(self, idx: int) -> tuple[int, int]:
        n = len(self)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"GraspDataset index {idx} out of range for {n} samples")
        b = int(np.searchsorted(self._cum, idx, side="right") - 1)
        return b, idx - int(self._cum[b])

    def _load_image(self, b: int, key: str, step: int) -> np.ndarray:
        """One frame (C, h, w) float32, from the cache or read + resized."""
        if self.cache is not None:
            return self.cache.get(b, key, step)
        frame = self.replay_buffers[b][key][step]            # (H, W, C) uint8
        return _IMAGE_FNS[key](frame, self.image_sizes[key])  # (C, h, w) float32

    def __getitem__(self, idx: int) -> dict[str, Any]:
        b, local = self._locate(int(idx))
        rb = self.replay_buffers[b]
        obs_idx, act_idx, is_pad = self.samplers[b].window(local)   # (T,), (H,), (H,)
        obs: dict[str, torch.Tensor] = {}
        if self.features is not None:
            self._cached_obs(obs, b, obs_idx)
        for key in ([] if self.features is not None else self.image_keys):
            frames = [self._load_image(b, key, int(s)) for s in obs_idx]
            obs[key] = torch.from_numpy(np.stack(frames, axis=0))  # (T, C, h, w)
        for key in self.lowdim_keys:
            obs[key] = torch.from_numpy(np.asarray(rb[key][obs_idx], dtype=np.float32))  # (T, D)
        action = np.asarray(rb["action"][act_idx], dtype=np.float32)  # (H, A)
        sample = {"obs": obs, "action": torch.from_numpy(action),
                  "action_is_pad": torch.from_numpy(is_pad.copy())}
        if self.load_text:
            last = int(obs_idx[-1])                                        # the current step
            ep = int(np.searchsorted(rb.episode_ends, last, side="right"))
            sample["language"] = rb.language(ep) or ""
            sample["reasoning"] = rb.reasoning(last) or ""
        self._check_sample(sample, b)
        return sample

    def _cached_obs(self, obs: dict, b: int, obs_idx: np.ndarray) -> None:
        """Fill ``rgbm`` (mask only), ``head_tokens`` and ``wrist_tokens`` from the feature cache."""
        fc = self.features
        copy = int(torch.randint(fc.copies, ())) if fc.copies > 1 else 0  # one jitter draw per sample
        obs["rgbm"] = torch.from_numpy(np.stack([fc.get(b, "mask", int(s)) for s in obs_idx]))  # (T, 1, h, w)
        for key in ("head_tokens", "wrist_tokens"):
            obs[key] = torch.from_numpy(np.stack([fc.get(b, key, int(s), copy) for s in obs_idx]))  # (T, n, C)

    def _check_sample(self, sample: Mapping[str, Any], b: int) -> None:
        """Output contract check against shape_meta (cheap tuple comparisons)."""
        for key, t in sample["obs"].items():
            want = self._want_shapes[key]
            if tuple(t.shape) != want:
                raise ShapeMetaError(f"{self.dataset_paths[b]}: sample obs '{key}' has shape "
                                     f"{tuple(t.shape)}; shape_meta expects {want}")
        want_a = (self.horizon, self.action_dim)
        if tuple(sample["action"].shape) != want_a:
            raise ShapeMetaError(f"{self.dataset_paths[b]}: sample action has shape "
                                 f"{tuple(sample['action'].shape)}; shape_meta expects {want_a}")

    def __repr__(self) -> str:
        split = "val" if self.is_validation else "train"
        return (f"GraspDataset({split}: {len(self)} windows from {self.n_episodes} episodes of "
                f"{len(self.dataset_paths)} dataset(s), horizon={self.horizon}, images={self.image_sizes})")
