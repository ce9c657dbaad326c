"""The ``deployment`` format: our own deployment recordings as a read-only source.

``--save-deployment-data`` (:class:`inference_utils.runtime.recorder.DeploymentRecorder`) writes one
``attempt_XXX.hdf5`` (+ an ``.mp4`` preview, ignored here) per grasp attempt::

    right_cam_img  uint8   (T, H, W, 3)   wrist image, BGR      -> right_cam_img
    rgbm           uint8   (T, H, W, 4)   head BGR + mask 0/255 -> rgbm
    state          float32 (T, 13)                              -> right_state
    action         float32 (T, 13)                              -> action

A directory of such files (natural order) or one file is a dataset of one episode per attempt;
images are read lazily as they are (already BGR). Attempts that recorded no frame (a file without
datasets, ``attrs['frames'] == 0``) are skipped. There is no text: ``language``/``reasoning`` are
None. :class:`~controller.dataset.formats.base.SourceOptions` do not apply (our layout already).
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from controller.dataset.episodes import EpisodeArrays
from controller.dataset.errors import IMAGE_CHANNELS, LOW_DIM_DIMS, DatasetError
from controller.dataset.formats.base import SourceOptions, register_format
from controller.dataset.formats.h5_frames import Channel, LazyH5Frames, list_h5_files, open_h5

#: our key -> the dataset name in an attempt file.
KEY_MAP = {"right_cam_img": "right_cam_img", "rgbm": "rgbm", "right_state": "state", "action": "action"}

__all__ = ["DeploymentSource", "detect_deployment", "KEY_MAP"]


def detect_deployment(path: str) -> bool:
    """An ``.hdf5`` file, or a directory of them, whose first non-empty file has ``state`` and ``rgbm``."""
    for file in list_h5_files(path)[:8]:
        try:
            with open_h5(file) as f:
                if len(f.keys()) == 0:
                    continue
                return "state" in f and "rgbm" in f
        except DatasetError:
            return False
    return False


class DeploymentSource(EpisodeArrays):
    """Read-only :class:`~controller.dataset.formats.base.EpisodeSource` over deployment attempt files."""

    format_name = "deployment"

    def __init__(self, path: str, files: list[str], ends: np.ndarray, data: Mapping[str, Any], skipped: list[str]):
        self.path, self.files, self.skipped = path, files, skipped
        self._episode_ends = np.asarray(ends, dtype=np.int64)
        self._data = dict(data)

    @classmethod
    def open(cls, path: str, keys: Optional[Sequence[str]] = None, low_dim_dims: Optional[Mapping[str, int]] = None,
             verify: bool = True, options: Optional[SourceOptions] = None) -> "DeploymentSource":
        """Open and check every attempt file (keys present, lengths agree, shapes consistent)."""
        want = list(keys) if keys is not None else list(KEY_MAP)
        for key in want:
            if key not in KEY_MAP:
                raise DatasetError(f"{path}: unknown key '{key}'; deployment recordings provide {list(KEY_MAP)}")
        dims = dict(LOW_DIM_DIMS)
        dims.update(dict(low_dim_dims or {}))
        files, skipped, lengths = [], [], []
        lows: dict[str, list] = {k: [] for k in want if k not in IMAGE_CHANNELS}
        chans: dict[str, list] = {k: [] for k in want if k in IMAGE_CHANNELS}
        shapes: dict[str, tuple] = {}
        for file in list_h5_files(path):
            ep = len(files)
            with open_h5(file) as f:
                if len(f.keys()) == 0 and int(f.attrs.get("frames", 0)) == 0:
                    skipped.append(file)
                    continue
                lens = {}
                for key in want:
                    name = KEY_MAP[key]
                    if name not in f:
                        raise DatasetError(f"{file}: missing key '{name}' (episode {ep}); found {sorted(f.keys())}, "
                                           f"expected {sorted(KEY_MAP.values())}")
                    ds = f[name]
                    lens[name] = int(ds.shape[0]) if ds.ndim else -1
                    if key in IMAGE_CHANNELS:
                        c = IMAGE_CHANNELS[key]
                        if ds.ndim != 4 or ds.shape[3] != c or ds.dtype != np.uint8:
                            raise DatasetError(f"{file}: key '{name}' has shape {ds.shape} dtype {ds.dtype} (episode "
                                               f"{ep}); expected uint8 (T, H, W, {c})")
                        if key in shapes and tuple(ds.shape[1:]) != shapes[key]:
                            raise DatasetError(f"{file}: key '{name}' has frames of {tuple(ds.shape[1:])} (episode "
                                               f"{ep}); earlier attempts have {shapes[key]}")
                        shapes.setdefault(key, tuple(int(s) for s in ds.shape[1:]))
                        chans[key].append([Channel(file, name, "raw", channels=c)])
                    else:
                        lows[key].append(cls._low_dim(file, ds, name, ep, dims.get(key)))
                n = next(iter(lens.values()))
                if n < 1 or len(set(lens.values())) > 1:
                    raise DatasetError(f"{file}: per-step keys disagree in length or are empty (episode {ep}): "
                                       f"{lens}; expected the same number >= 1 of steps (a recording cut short?)")
                files.append(file)
                lengths.append(n)
        if not files:
            raise DatasetError(f"{path}: no deployment attempt with frames found (*.hdf5 with "
                               f"{sorted(KEY_MAP.values())}; skipped {len(skipped)} empty attempt(s))")
        ends = np.cumsum(lengths).astype(np.int64)                            # (J,)
        data: dict[str, Any] = {}
        for key in want:
            if key in IMAGE_CHANNELS:
                data[key] = LazyH5Frames(key, chans[key], ends, shapes[key])
            else:
                data[key] = np.concatenate(lows[key], axis=0)                  # (K, D) float32
        return cls(path, files, ends, data, skipped)

    @staticmethod
    def _low_dim(file: str, ds: Any, name: str, ep: int, dim: Optional[int]) -> np.ndarray:
        if ds.ndim != 2 or (dim is not None and ds.shape[1] != dim) or np.dtype(ds.dtype).kind != "f":
            want = f"(T, {dim})" if dim is not None else "(T, D)"
            raise DatasetError(f"{file}: key '{name}' has shape {ds.shape} dtype {ds.dtype} (episode {ep}); "
                               f"expected float {want}")
        try:
            arr = np.asarray(ds[()], dtype=np.float32)                        # (T, D)
        except OSError as exc:
            raise DatasetError(f"{file}: key '{name}' (episode {ep}) could not be read ({exc})") from exc
        if not np.isfinite(arr).all():
            step = int(np.nonzero(~np.isfinite(arr).all(axis=1))[0][0])
            raise DatasetError(f"{file}: key '{name}' has NaN/inf at step {step} of episode {ep}; expected finite values")
        return arr

    # ------------------------------------------------------------------ EpisodeSource
    def language(self, episode: int) -> Optional[str]:
        """Deployment recordings carry no instruction: None (IndexError for a bad episode)."""
        _ = range(self.n_episodes)[episode]
        return None

    def reasoning(self, step: int) -> Optional[str]:
        """Deployment recordings carry no reasoning: None (IndexError for a bad step)."""
        _ = range(self.n_steps)[step]
        return None

    def describe(self) -> dict[str, Any]:
        """Format, files, skipped empty attempts, keys with shapes."""
        return {"format": self.format_name, "path": self.path, "files": len(self.files),
                "first_files": [os.path.basename(p) for p in self.files[:3]],
                "skipped_empty": [os.path.basename(p) for p in self.skipped],
                "n_episodes": self.n_episodes, "n_steps": self.n_steps, "language": False, "reasoning": False,
                "keys": {k: {"shape": tuple(int(s) for s in v.shape), "dtype": str(v.dtype)}
                         for k, v in self._data.items()}}

    def __repr__(self) -> str:
        return f"DeploymentSource({self.path!r}, {self.n_episodes} attempts, {self.n_steps} steps)"


def open_deployment(path: str, keys: Optional[Sequence[str]], low_dim_dims: Optional[Mapping[str, int]],
                    verify: bool, options: SourceOptions) -> DeploymentSource:
    """Opener registered for ``deployment``."""
    return DeploymentSource.open(path, keys, low_dim_dims, verify, options)


register_format("deployment", detect_deployment, open_deployment)
