"""Writer (sink ``lerobot``): our episodes -> a LeRobot v3.0 dataset directory that LeRobot loads as is.

Features written (names are the defaults; ``head``/``wrist``/``mask`` can be renamed):

    observation.state             float32 (D_state,)  <- right_state
    action                        float32 (D_action,) <- action
    observation.images.head       video (H, W, 3)     <- rgbm[..., :3] (BGR -> RGB)
    observation.images.head_mask  video (H, W, 3)     <- rgbm[..., 3] as gray (0/255; 0/1 masks x255)
    observation.images.wrist      video (H, W, 3)     <- right_cam_img (BGR -> RGB)
    reasoning                     string (1,)         <- per-step sub-step reasoning ("" = none)
    timestamp, frame_index, episode_index, index, task_index   (LeRobot's bookkeeping columns)

The task of an episode is its ``language`` ("" when None). Reasoning uses LeRobot's ``string``
feature dtype (shape (1,), a plain parquet string column; LeRobot skips it in stats and returns
it as a Python string per frame), so no vocabulary file is needed. Videos are h264/yuv420p with a
key frame every ``gop`` frames; the mask video is encoded at a lower ``mask_crf`` so a > 127
threshold gives the mask back exactly. Episodes are appended to the current data parquet / mp4
file of each key until it exceeds ``data_files_size_in_mb`` / ``video_files_size_in_mb``.

Everything is written into ``<path>.tmp-<pid>`` and renamed onto ``path`` by :meth:`close`;
:meth:`abort` (or an exception inside ``with``) removes it, so a failed write leaves nothing.
``meta/dexgraspvla.json`` records the mapping so our reader gets the 4-channel ``rgbm`` back.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from controller.dataset.errors import DatasetError
from controller.dataset.formats.base import register_sink
from controller.dataset.formats.lerobot_v3_meta import (DEFAULT_DATA_PATH, DEFAULT_VIDEO_PATH, EPISODES_PATH,
                                                        MAPPING_FILE, REASONING_COLUMN, SUPPORTED_VERSION)
from controller.dataset.formats.video_io import VideoWriter

__all__ = ["LeRobotSink", "feature_stats", "image_stats"]

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
_MB = 1024 * 1024
_BOOK = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
         "task_index": "int64"}


def _qname(q: float) -> str:
    return f"q{int(round(q * 100)):02d}"


def feature_stats(arr: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot's per-feature stats of (T, D) (or (T,)) values: min/max/mean/std/count/quantiles."""
    a = np.asarray(arr, dtype=np.float64).reshape(len(arr), -1)
    out = {"min": a.min(0), "max": a.max(0), "mean": a.mean(0), "std": a.std(0), "count": np.array([len(a)])}
    for q in QUANTILES:
        out[_qname(q)] = np.quantile(a, q, axis=0)
    return out


def image_stats(hist: np.ndarray, frames: int) -> dict[str, np.ndarray]:
    """Per-channel stats (shape (3, 1, 1), values in [0, 1]) from a (3, 256) histogram of uint8 pixels
    of ``frames`` frames (``count``, as LeRobot counts image stats)."""
    v = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum(1).astype(np.float64)
    mean = (hist * v).sum(1) / n
    std = np.sqrt(np.maximum((hist * v ** 2).sum(1) / n - mean ** 2, 0.0))
    nz = hist > 0
    cdf = np.cumsum(hist, 1) / n[:, None]
    out = {"min": v[nz.argmax(1)], "max": v[255 - nz[:, ::-1].argmax(1)], "mean": mean, "std": std}
    for q in QUANTILES:
        out[_qname(q)] = v[(cdf < q).sum(1).clip(0, 255)]
    out = {k: x.reshape(3, 1, 1) for k, x in out.items()}
    out["count"] = np.array([int(frames)])
    return out


def _hist(rgb: np.ndarray) -> np.ndarray:
    """(3, 256) pixel counts of (T, H, W, 3) uint8 frames (every 4th pixel of each axis, like a sample)."""
    sub = rgb[:, ::4, ::4].reshape(-1, 3)
    return np.stack([np.bincount(sub[:, c], minlength=256) for c in range(3)])


def _listify(stats: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


class LeRobotSink:
    """Writes our episodes as a LeRobot v3.0 dataset (see the module docstring)."""

    def __init__(self, path: str, fps: float = 20.0, overwrite: bool = False, *, codec: str = "libx264",
                 crf: int = 18, mask_crf: int = 8, gop: int = 2, robot_type: Optional[str] = None,
                 head: str = "head", wrist: str = "wrist", mask: str = "head_mask",
                 state_names: Optional[Sequence[str]] = None, action_names: Optional[Sequence[str]] = None,
                 chunks_size: int = 1000, data_files_size_in_mb: float = 100, video_files_size_in_mb: float = 200):
        import pyarrow  # noqa: F401,PLC0415  (fail early when missing)
        self.path = os.fspath(path)
        if abs(fps - round(fps)) > 1e-9 or round(fps) <= 0:
            raise DatasetError(f"{self.path}: fps {fps} is not a positive integer; LeRobot v3.0 stores fps as an int")
        self.fps, self.overwrite, self.robot_type = int(round(fps)), overwrite, robot_type
        self.codec, self.crf, self.mask_crf, self.gop = codec, crf, mask_crf, gop
        self.chunks_size, self.data_mb, self.video_mb = chunks_size, data_files_size_in_mb, video_files_size_in_mb
        self.state_names, self.action_names = state_names, action_names
        self.cam_keys = {"head": f"observation.images.{head}", "wrist": f"observation.images.{wrist}",
                         "mask": f"observation.images.{mask}"}
        self.tmp = f"{self.path}.tmp-{os.getpid()}"
        if os.path.exists(self.tmp):
            shutil.rmtree(self.tmp)
        os.makedirs(os.path.join(self.tmp, "meta"))
        self.features: Optional[dict[str, dict]] = None
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.n_frames = 0
        self._low: dict[str, list[np.ndarray]] = {}
        self._hists: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}
        self._videos: dict[str, tuple[VideoWriter, int, int]] = {}   # key -> (writer, chunk, file)
        self._data: Optional[tuple[Any, int, int, str]] = None        # (ParquetWriter, chunk, file, path)
        self._done = False

    # ------------------------------------------------------------------ helpers
    def _next(self, chunk: int, file: int) -> tuple[int, int]:
        return (chunk + 1, 0) if file + 1 >= self.chunks_size else (chunk, file + 1)

    def _define(self, data: Mapping[str, np.ndarray]) -> None:
        feats: dict[str, dict] = {}
        for ours, name, names in (("right_state", "observation.state", self.state_names),
                                  ("action", "action", self.action_names)):
            d = int(data[ours].shape[1])
            names = list(names) if names else [f"{ours}_{i}" for i in range(d)]
            if len(names) != d:
                raise DatasetError(f"{self.path}: {len(names)} names for '{ours}' of width {d}")
            feats[name] = {"dtype": "float32", "shape": [d], "names": names}
        for ours, roles in (("rgbm", ("head", "mask")), ("right_cam_img", ("wrist",))):
            if ours in data:
                h, w = (int(s) for s in data[ours].shape[1:3])
                if h % 2 or w % 2:
                    raise DatasetError(f"{self.path}: key '{ours}' frames are {h}x{w}; expected an even height "
                                       f"and width (yuv420p video halves the colour resolution)")
                for role in roles:
                    feats[self.cam_keys[role]] = {
                        "dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                        "info": {"video.height": h, "video.width": w, "video.codec": "h264" if "264" in self.codec
                                 else self.codec, "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                                 "video.fps": self.fps, "video.channels": 3, "has_audio": False}}
        feats[REASONING_COLUMN] = {"dtype": "string", "shape": [1], "names": None}
        for k, dt in _BOOK.items():
            feats[k] = {"dtype": dt, "shape": [1], "names": None}
        self.features = feats

    def _check(self, data: Mapping[str, np.ndarray], reasoning: Optional[Sequence[str]]) -> int:
        for k in ("right_state", "action"):
            if k not in data:
                raise DatasetError(f"{self.path}: episode {len(self.episodes)} has no key '{k}'; expected our keys "
                                   f"right_state and action (and rgbm / right_cam_img for videos)")
        t = len(data["action"])
        if t == 0:
            raise DatasetError(f"{self.path}: episode {len(self.episodes)} is empty; expected at least 1 step")
        want = {"right_state": 2, "action": 2, "rgbm": 4, "right_cam_img": 4}
        for k, nd in want.items():
            if k in data and (np.ndim(data[k]) != nd or len(data[k]) != t):
                raise DatasetError(f"{self.path}: episode {len(self.episodes)} key '{k}' has shape "
                                   f"{np.shape(data[k])}; expected {nd}-D with {t} steps (like 'action')")
        if reasoning is not None and len(reasoning) != t:
            raise DatasetError(f"{self.path}: episode {len(self.episodes)} has {len(reasoning)} reasoning strings; "
                               f"expected {t} (one per step)")
        if self.features is None:
            self._define(data)
        feats = self.features or {}
        for ours, name in (("right_state", "observation.state"), ("action", "action")):
            if data[ours].shape[1] != feats[name]["shape"][0]:
                raise DatasetError(f"{self.path}: episode {len(self.episodes)} key '{ours}' has width "
                                   f"{data[ours].shape[1]}; expected {feats[name]['shape'][0]} like episode 0")
        for ours, role in (("rgbm", "head"), ("right_cam_img", "wrist")):
            key = self.cam_keys[role]
            if (ours in data) != (key in feats) or (ours in data and list(data[ours].shape[1:3]) != feats[key]["shape"][:2]):
                raise DatasetError(f"{self.path}: episode {len(self.episodes)} key '{ours}' has shape "
                                   f"{np.shape(data[ours]) if ours in data else 'none'}; expected it like episode 0")
        return t

    def _write_video(self, key: str, frames: np.ndarray, crf: int) -> dict[str, Any]:
        h, w = frames.shape[1:3]
        if key not in self._videos:
            self._videos[key] = (None, 0, -1)  # type: ignore[assignment]
        writer, chunk, file = self._videos[key]
        if writer is None or writer.size() >= self.video_mb * _MB:
            if writer is not None:
                writer.close()
            chunk, file = self._next(chunk, file) if file >= 0 else (0, 0)
            vpath = os.path.join(self.tmp, DEFAULT_VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file))
            writer = VideoWriter(vpath, self.fps, w, h, codec=self.codec, crf=crf, gop=self.gop)
            self._videos[key] = (writer, chunk, file)
        start = writer.n_frames / self.fps
        for f in frames:
            writer.add(f)
        hist = _hist(frames)
        self._hists[key] = self._hists.get(key, 0) + hist
        self._counts[key] = self._counts.get(key, 0) + len(frames)
        return {f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": writer.n_frames / self.fps,
                **{f"stats/{key}/{s}": v for s, v in _listify(image_stats(hist, len(frames))).items()}}

    def _write_rows(self, cols: dict[str, Any]) -> dict[str, Any]:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415
        feats = self.features or {}
        arrays, fields = [], []
        for name, ft in feats.items():
            if ft["dtype"] == "video":
                continue
            v = cols[name]
            if ft["dtype"] == "string":
                arr = pa.array(list(v), type=pa.string())
            elif ft["shape"] == [1]:
                arr = pa.array(np.asarray(v, dtype=ft["dtype"]))
            else:
                flat = pa.array(np.asarray(v, dtype=ft["dtype"]).reshape(-1))
                arr = pa.FixedSizeListArray.from_arrays(flat, ft["shape"][0])
            arrays.append(arr)
            fields.append(pa.field(name, arr.type))
        hf = {f.name: ({"dtype": feats[f.name]["dtype"], "_type": "Value"} if feats[f.name]["shape"] == [1] else
                       {"feature": {"dtype": feats[f.name]["dtype"], "_type": "Value"},
                        "length": feats[f.name]["shape"][0], "_type": "List"}) for f in fields}
        schema = pa.schema(fields, metadata={b"huggingface": json.dumps({"info": {"features": hf}}).encode()})
        table = pa.Table.from_arrays(arrays, schema=schema)
        writer, chunk, file, dpath = self._data or (None, 0, -1, "")
        if writer is None or os.path.getsize(dpath) >= self.data_mb * _MB:
            if writer is not None:
                writer.close()
            chunk, file = self._next(chunk, file) if file >= 0 else (0, 0)
            dpath = os.path.join(self.tmp, DEFAULT_DATA_PATH.format(chunk_index=chunk, file_index=file))
            os.makedirs(os.path.dirname(dpath), exist_ok=True)
            writer = pq.ParquetWriter(dpath, table.schema, compression="snappy")
        writer.write_table(table)
        self._data = (writer, chunk, file, dpath)
        return {"data/chunk_index": chunk, "data/file_index": file}

    # ------------------------------------------------------------------ EpisodeSink
    def add_episode(self, data: Mapping[str, np.ndarray], language: Optional[str] = None,
                    reasoning: Optional[Sequence[str]] = None) -> None:
        if self._done:
            raise DatasetError(f"{self.path}: the writer is closed")
        t = self._check(data, reasoning)
        ep = len(self.episodes)
        task = language or ""
        task_index = self.tasks.setdefault(task, len(self.tasks))
        frame_index = np.arange(t, dtype=np.int64)
        cols: dict[str, Any] = {
            "observation.state": np.asarray(data["right_state"], np.float32),
            "action": np.asarray(data["action"], np.float32),
            REASONING_COLUMN: ["" if r is None else str(r) for r in reasoning] if reasoning is not None else [""] * t,
            "timestamp": (frame_index / self.fps).astype(np.float32), "frame_index": frame_index,
            "episode_index": np.full(t, ep, np.int64), "index": np.arange(self.n_frames, self.n_frames + t),
            "task_index": np.full(t, task_index, np.int64)}
        row: dict[str, Any] = {"episode_index": ep, "tasks": [task], "length": t, **self._write_rows(cols),
                               "dataset_from_index": self.n_frames, "dataset_to_index": self.n_frames + t}
        if "rgbm" in data:
            rgbm = np.asarray(data["rgbm"])
            row.update(self._write_video(self.cam_keys["head"], np.ascontiguousarray(rgbm[..., 2::-1]), self.crf))
            m = rgbm[..., 3]
            m = (m > 0).astype(np.uint8) * 255 if m.max(initial=0) <= 1 else m
            row.update(self._write_video(self.cam_keys["mask"], np.repeat(m[..., None], 3, axis=3), self.mask_crf))
        if "right_cam_img" in data:
            row.update(self._write_video(self.cam_keys["wrist"],
                                         np.ascontiguousarray(np.asarray(data["right_cam_img"])[..., ::-1]), self.crf))
        for name, v in cols.items():
            if name != REASONING_COLUMN:
                self._low.setdefault(name, []).append(np.asarray(v))
                row.update({f"stats/{name}/{s}": x for s, x in _listify(feature_stats(np.asarray(v))).items()})
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        self.episodes.append(row)
        self.n_frames += t

    def _finish_files(self) -> None:
        for writer, _, _ in self._videos.values():
            writer.close()
        self._videos = {}
        if self._data is not None:
            self._data[0].close()
            self._data = None

    def _write_meta(self) -> None:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415
        meta = os.path.join(self.tmp, "meta")
        tasks = sorted(self.tasks, key=self.tasks.__getitem__)
        pandas_md = {"index_columns": ["__index_level_0__"],
                     "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                                         "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
                     "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                  "numpy_type": "int64", "metadata": None},
                                 {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                                  "numpy_type": "object", "metadata": None}],
                     "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
        table = pa.table({"task_index": pa.array([self.tasks[t] for t in tasks], pa.int64()),
                          "__index_level_0__": pa.array(tasks, pa.string())})
        pq.write_table(table.replace_schema_metadata({b"pandas": json.dumps(pandas_md).encode()}),
                       os.path.join(meta, "tasks.parquet"))
        epath = os.path.join(self.tmp, EPISODES_PATH.format(chunk_index=0, file_index=0))
        os.makedirs(os.path.dirname(epath), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episodes), epath, compression="snappy")
        stats = {k: _listify(feature_stats(np.concatenate(v))) for k, v in self._low.items()}
        stats.update({k: _listify(image_stats(h, self._counts[k])) for k, h in self._hists.items()})
        info = {"codebase_version": SUPPORTED_VERSION, "robot_type": self.robot_type,
                "total_episodes": len(self.episodes), "total_frames": self.n_frames, "total_tasks": len(self.tasks),
                "chunks_size": self.chunks_size, "data_files_size_in_mb": self.data_mb,
                "video_files_size_in_mb": self.video_mb, "fps": self.fps, "splits": {"train": f"0:{len(self.episodes)}"},
                "data_path": DEFAULT_DATA_PATH, "video_path": DEFAULT_VIDEO_PATH if self._hists else None,
                "features": self.features}
        feats = self.features or {}
        opts: dict[str, Any] = {"camera_map": {r: self.cam_keys[r] for r in ("head", "wrist") if self.cam_keys[r] in feats},
                                "state_keys": ["observation.state"], "action_keys": ["action"]}
        if self.cam_keys["mask"] in feats:
            opts.update(mask="from-key", mask_key=self.cam_keys["mask"])
        for name, obj in (("stats.json", stats), ("info.json", info),
                          (os.path.basename(MAPPING_FILE), {"writer": "dexgraspvla", "options": opts})):
            with open(os.path.join(meta, name), "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=4, ensure_ascii=False)

    def close(self) -> None:
        """Finish every file, write meta/ and move the dataset onto ``path``."""
        if self._done:
            return
        try:
            if not self.episodes:
                raise DatasetError(f"{self.path}: no episodes were written; a LeRobot dataset needs at least one")
            self._finish_files()
            self._write_meta()
            if os.path.exists(self.path):
                if not self.overwrite:
                    raise DatasetError(f"{self.path} exists; pass --overwrite to replace it")
                old = f"{self.path}.old-{os.getpid()}"
                os.rename(self.path, old)
                os.rename(self.tmp, self.path)
                shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.remove(old)
            else:
                os.rename(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        """Drop everything written (nothing is left at ``path`` or beside it)."""
        for writer, _, _ in self._videos.values():
            writer.abort()
        self._videos = {}
        if self._data is not None:
            try:
                self._data[0].close()
            except Exception:
                pass
            self._data = None
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._done = True

    def __enter__(self) -> "LeRobotSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None:
            self.abort()
        else:
            self.close()


register_sink("lerobot", LeRobotSink)
