"""LeRobot v3.0 dataset directories as an :class:`~controller.dataset.formats.base.EpisodeSource`.

Layout read (all paths relative to the dataset directory)::

    meta/info.json                          codebase_version "v3.0", fps, features, data_path, video_path
    meta/stats.json                         (optional; shown by describe())
    meta/tasks.parquet                      task strings (pandas index) + task_index
    meta/episodes/chunk-XXX/file-XXX.parquet  one row per episode: length, dataset_from_index/to_index,
                                            data/chunk_index, data/file_index, videos/<key>/chunk_index,
                                            videos/<key>/file_index, videos/<key>/from_timestamp, ...
    data/chunk-XXX/file-XXX.parquet         one row per frame: index, episode_index, frame_index,
                                            timestamp, task_index, observation.state, action, ...
    videos/<key>/chunk-XXX/file-XXX.mp4     episodes concatenated; frame of a step at
                                            from_timestamp + timestamp

Mapping onto our keys (:class:`SourceOptions`):

* ``camera_map`` ``head`` / ``wrist`` -> a camera feature (``observation.images.<name>``; the prefix
  may be omitted). Defaults: ``observation.images.head`` / ``observation.images.wrist`` when
  present, else the first camera whose name has no ``wrist`` (head) and the first with ``wrist``
  (one with ``right`` preferred).
  Camera features may be videos or images stored in the parquet as PNG/JPEG bytes.
* ``state_keys`` (default ``observation.state``) and ``action_keys`` (default ``action``):
  columns concatenated into ``right_state`` / ``action`` (float32); without ``keys`` a low-dim key
  whose columns the dataset lacks is left out (asking for it names the missing feature).
* mask: ``zeros``, or ``from-key`` with ``mask_key`` a camera feature (channel 0, > 127 -> 255).
* Datasets written by our own sink carry ``meta/dexgraspvla.json`` (the mapping used to write
  them); with options equal to the defaults it is used, so our mask video comes back as the 4th
  channel (pass any non-default option, e.g. an explicit camera_map, to map them yourself).
* language: the task of the episode's first frame; reasoning: the ``reasoning`` string column
  (``""`` -> None) or, for LeRobot 0.4-0.5 datasets, ``subtask_index`` + ``meta/subtasks.parquet``.

Frames are RGB in LeRobot; ours are BGR, so channels are reversed on read.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from controller.dataset.episodes import EpisodeArrays
from controller.dataset.errors import IMAGE_CHANNELS, DatasetError
from controller.dataset.formats.base import SourceOptions, register_format
from controller.dataset.formats.lerobot_v3_meta import (MAPPING_FILE, REASONING_COLUMN, LeRobotMeta,
                                                        ParquetColumns, read_json)
from controller.dataset.formats.video_io import VideoError, read_frame

__all__ = ["CameraArray", "LeRobotSource", "detect_lerobot", "open_lerobot"]


def _feature_hw(meta: LeRobotMeta, key: str) -> tuple[int, int]:
    ft = meta.features[key]
    shape, names = list(ft.get("shape") or ()), list(ft.get("names") or ())
    if len(shape) != 3:
        raise DatasetError(f"{meta.info_path}: feature '{key}' has shape {shape}; expected (H, W, 3) or (3, H, W)")
    if "height" in names and "width" in names:
        return int(shape[names.index("height")]), int(shape[names.index("width")])
    return (int(shape[0]), int(shape[1])) if shape[2] in (1, 3) else (int(shape[1]), int(shape[2]))


class CameraArray:
    """Lazy (K, H, W, C) uint8 BGR frames of one camera (+ a mask channel for ``rgbm``).

    Holds only paths and numbers, so it pickles; decoders live in :mod:`video_io`'s per-process cache.
    """

    def __init__(self, meta: LeRobotMeta, cols: ParquetColumns, key: str, mask_key: Optional[str],
                 episode_ends: np.ndarray, with_mask_channel: bool):
        self.root, self.key, self.mask_key = meta.root, key, mask_key
        h, w = _feature_hw(meta, key)
        self.shape = (int(episode_ends[-1]), h, w, 4 if with_mask_channel else 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4
        self._ends = episode_ends
        self._starts = episode_ends - meta.lengths
        self._ts = cols.timestamp
        self._tol = 0.4 / meta.fps
        self._src: dict[str, Any] = {}
        for k in [key] + ([mask_key] if mask_key else []):
            if meta.features[k]["dtype"] == "video":
                self._src[k] = ([meta.video_file(k, e) for e in range(len(episode_ends))],
                                np.asarray(meta.episodes[f"videos/{k}/from_timestamp"], dtype=np.float64))
            else:
                self._src[k] = cols.image_bytes(k)

    def __len__(self) -> int:
        return self.shape[0]

    def _decode(self, k: str, step: int, gray: bool) -> np.ndarray:
        ep = int(np.searchsorted(self._ends, step, side="right"))
        frame = step - int(self._starts[ep])
        src = self._src[k]
        try:
            if isinstance(src, tuple):
                rgb = read_frame(src[0][ep], src[1][ep] + self._ts[step], self._tol)
                img = rgb[..., 0] if gray else rgb[..., ::-1]
            else:
                import cv2  # noqa: PLC0415
                buf = src[step]
                img = None if not buf else cv2.imdecode(np.frombuffer(buf, np.uint8),
                                                        cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
                if img is None:
                    raise DatasetError(f"{self.root}: image bytes do not decode; expected PNG/JPEG bytes")
        except (VideoError, DatasetError) as exc:
            raise DatasetError(f"{exc} [key '{k}', episode {ep}, frame {frame}, step {step}]") from exc
        if img.shape[:2] != self.shape[1:3]:
            raise DatasetError(f"{self.root}: key '{k}', episode {ep}, frame {frame} decodes to {img.shape[:2]}; "
                               f"expected (H, W) = {self.shape[1:3]} from meta/info.json")
        return img

    def _frame(self, step: int) -> np.ndarray:
        img = self._decode(self.key, step, gray=False)
        if self.shape[3] == 3:
            return np.ascontiguousarray(img)
        out = np.zeros(self.shape[1:], np.uint8)
        out[..., :3] = img
        if self.mask_key:
            out[..., 3] = np.where(self._decode(self.mask_key, step, gray=True) > 127, 255, 0)
        return out

    def __getitem__(self, idx: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(idx, tuple):
            idx, rest = idx[0], idx[1:]
        if isinstance(idx, (int, np.integer)):
            out = self._frame(range(self.shape[0])[int(idx)])
        else:
            steps = range(self.shape[0])[idx] if isinstance(idx, slice) else np.asarray(idx).reshape(-1)
            out = np.stack([self._frame(range(self.shape[0])[int(s)]) for s in steps]) if len(steps) \
                else np.zeros((0,) + self.shape[1:], np.uint8)
        return out[(slice(None),) * (out.ndim - 3) + rest] if rest else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out.astype(dtype) if dtype is not None else out


def _read_mapping(root: str) -> Optional[SourceOptions]:
    path = os.path.join(root, MAPPING_FILE)
    if not os.path.isfile(path):
        return None
    m = read_json(path, "mapping of our keys written by DexGraspVLA")
    try:
        return SourceOptions.from_config(m.get("options"))
    except (DatasetError, AttributeError, TypeError) as exc:
        raise DatasetError(f"{path}: field 'options' is not valid dataset options ({exc})") from exc


def detect_lerobot(path: str) -> bool:
    """A directory holding ``meta/info.json``."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "meta", "info.json"))


def _camera_key(meta: LeRobotMeta, name: str, role: str) -> str:
    for cand in (name, f"observation.images.{name}"):
        if cand in meta.camera_keys:
            return cand
    raise DatasetError(f"{meta.info_path}: camera_map {role}={name!r} names no camera feature; expected one "
                       f"of {meta.camera_keys}")


def _default_cameras(meta: LeRobotMeta) -> dict[str, str]:
    cams = [k for k in meta.camera_keys if not k.endswith("_mask")]
    out: dict[str, str] = {}
    for role in ("head", "wrist"):
        if f"observation.images.{role}" in cams:
            out[role] = f"observation.images.{role}"
    if "head" not in out:
        head = [k for k in cams if "wrist" not in k and k != out.get("wrist")]
        if head:
            out["head"] = head[0]
    if "wrist" not in out:   # our robot's wrist camera is on the right hand: prefer a 'right' wrist
        wrist = sorted((k for k in cams if "wrist" in k and k != out.get("head")), key=lambda k: "right" not in k)
        if wrist:
            out["wrist"] = wrist[0]
    return out


class LeRobotSource(EpisodeArrays):
    """Read-only view of a LeRobot v3.0 dataset in our keys (see the module docstring)."""

    format_name = "lerobot"

    def __init__(self, path: str, keys: Optional[Sequence[str]] = None,
                 low_dim_dims: Optional[Mapping[str, int]] = None, verify: bool = True,
                 options: Optional[SourceOptions] = None):
        self.path = os.fspath(path)
        options = options or SourceOptions()
        self.meta = meta = LeRobotMeta(self.path)
        if options == SourceOptions():
            options = _read_mapping(self.path) or options
        self.options = options
        cams = {**_default_cameras(meta), **{r: _camera_key(meta, n, r) for r, n in options.camera_map.items()}}
        self.cameras = cams
        state_keys = list(options.state_keys or ("observation.state",))
        action_keys = list(options.action_keys or ("action",))
        self.low_dim_sources = {"right_state": state_keys, "action": action_keys}
        mask_key = _camera_key(meta, options.mask_key, "mask") if options.mask == "from-key" else None
        self.mask_key = mask_key

        available = [k for k, role in (("rgbm", "head"), ("right_cam_img", "wrist")) if role in cams]
        low_dim = [k for k in ("right_state", "action")
                   if all(c in meta.features for c in self.low_dim_sources[k])]
        wanted = list(keys) if keys is not None else available + low_dim
        for k in wanted:
            if k not in available and k not in ("right_state", "action"):
                why = (f"no camera for role {'head' if k == 'rgbm' else 'wrist'} (cameras: {meta.camera_keys}; "
                       f"set camera_map)" if k in IMAGE_CHANNELS else "not a key of this format")
                raise DatasetError(f"{self.path}: key '{k}' is not available: {why}")

        # per-frame columns: bookkeeping + the low-dim features asked for + text
        columns = ["index", "episode_index", "frame_index", "timestamp", "task_index"]
        for k in ("right_state", "action"):
            if k in wanted:
                for col in self.low_dim_sources[k]:
                    if col not in meta.features:
                        raise DatasetError(f"{meta.info_path}: feature '{col}' (for our key '{k}') is not in "
                                           f"'features'; expected one of {sorted(meta.features)}")
                    columns.append(col)
        text_cols = [c for c in (REASONING_COLUMN, "subtask_index") if c in meta.features]
        image_cols = [cams[r] for r in ("head", "wrist") if r in cams and meta.features[cams[r]]["dtype"] == "image"]
        if mask_key and meta.features[mask_key]["dtype"] == "image":
            image_cols.append(mask_key)
        self._cols = ParquetColumns(meta, columns + text_cols, image_cols, verify=verify)

        self._episode_ends = np.cumsum(meta.lengths).astype(np.int64)
        self._data: dict[str, Any] = {}
        for k in ("right_state", "action"):
            if k in wanted:
                arr = np.concatenate([self._cols.matrix(c) for c in self.low_dim_sources[k]], axis=1)
                arr = arr.astype(np.float32, copy=False)
                dim = (low_dim_dims or {}).get(k)
                if dim is not None and arr.shape[1] != dim:
                    raise DatasetError(f"{self.path}: key '{k}' (from {self.low_dim_sources[k]}) has width "
                                       f"{arr.shape[1]}; expected {dim}")
                if not np.isfinite(arr).all():
                    step = int(np.nonzero(~np.isfinite(arr).all(axis=1))[0][0])
                    raise DatasetError(f"{self.path}: key '{k}' has NaN/inf values (first at step {step}, "
                                       f"episode {self._episode_of(step)}); expected finite values")
                self._data[k] = arr
        if verify:
            for key in [cams[r] for r in ("head", "wrist") if r in cams] + ([mask_key] if mask_key else []):
                if meta.features[key]["dtype"] == "video":
                    meta.check_video_files(key)
        if "rgbm" in wanted:
            self._data["rgbm"] = CameraArray(meta, self._cols, cams["head"], mask_key, self._episode_ends, True)
        if "right_cam_img" in wanted:
            self._data["right_cam_img"] = CameraArray(meta, self._cols, cams["wrist"], None,
                                                      self._episode_ends, False)
        self._data = {k: self._data[k] for k in wanted}
        self._reasoning = self._cols.strings(REASONING_COLUMN) if REASONING_COLUMN in text_cols else None
        if self._reasoning is None and "subtask_index" in text_cols:
            self._reasoning = meta.subtask_strings(self._cols.matrix("subtask_index")[:, 0])

    # ------------------------------------------------------------------ EpisodeSource
    def _episode_of(self, step: int) -> int:
        return int(np.searchsorted(self._episode_ends, step, side="right"))

    def language(self, episode: int) -> Optional[str]:
        episode = range(self.n_episodes)[episode]
        task = self.meta.task(int(self._cols.task_index[int(self.episode_starts[episode])]))
        return task or None

    def reasoning(self, step: int) -> Optional[str]:
        if self._reasoning is None:
            return None
        return self._reasoning[range(self.n_steps)[step]] or None

    def describe(self) -> dict[str, Any]:
        info = self.meta.info
        shapes = {k: tuple(v.shape) for k, v in self._data.items()}
        return {"format": self.format_name, "path": self.path, "codebase_version": info.get("codebase_version"),
                "robot_type": info.get("robot_type"), "fps": self.meta.fps, "episodes": self.n_episodes,
                "steps": self.n_steps, "keys": self.keys(), "shapes": shapes,
                "features": {k: {"dtype": v.get("dtype"), "shape": list(v.get("shape", ()))}
                             for k, v in self.meta.features.items()},
                "cameras": dict(self.cameras), "mask": self.mask_key or "zeros",
                "state_keys": self.low_dim_sources["right_state"], "action_keys": self.low_dim_sources["action"],
                "tasks": self.meta.tasks, "files": self.meta.file_counts(),
                "stats": sorted(self.meta.stats) if self.meta.stats else None,
                "reasoning": self._reasoning is not None}

    def __repr__(self) -> str:
        return (f"LeRobotSource({self.path!r}, {self.n_episodes} episodes, {self.n_steps} steps, "
                f"keys={self.keys()})")


def open_lerobot(path: str, keys: Optional[Sequence[str]], low_dim_dims: Optional[Mapping[str, int]],
                 verify: bool, options: SourceOptions) -> LeRobotSource:
    return LeRobotSource(path, keys, low_dim_dims, verify, options)


register_format("lerobot", detect_lerobot, open_lerobot)

# the writer registers the "lerobot" sink
from controller.dataset.formats import lerobot_v3_write  # noqa: E402,F401
