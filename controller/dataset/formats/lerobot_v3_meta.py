"""The metadata and frame-table layer of LeRobot v3.0 datasets (used by the reader and the writer).

:class:`LeRobotMeta` reads ``meta/info.json`` (only ``codebase_version`` v3.0), ``meta/tasks.parquet``,
``meta/episodes/chunk-XXX/file-XXX.parquet`` (without the per-episode ``stats/...`` columns) and
``meta/stats.json``; :class:`ParquetColumns` reads the asked columns of ``data/chunk-XXX/file-XXX.parquet``
and orders the rows as our steps (episode, then frame). Every problem is a :class:`DatasetError`
naming the file, the field or column, the episode where one applies, and what was expected.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Optional, Sequence

import numpy as np

from controller.dataset.errors import DatasetError

__all__ = ["CHUNK_FILE", "DEFAULT_DATA_PATH", "DEFAULT_VIDEO_PATH", "MAPPING_FILE", "REASONING_COLUMN",
           "SUPPORTED_VERSION", "LeRobotMeta", "ParquetColumns", "read_json"]

SUPPORTED_VERSION = "v3.0"
#: Per-step sub-step reasoning: a LeRobot 'string' feature of shape (1,) ("" = none at that step).
REASONING_COLUMN = "reasoning"
#: Our writer's record of how our keys map onto its features (read back with default options).
MAPPING_FILE = "meta/dexgraspvla.json"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DEFAULT_DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
DEFAULT_VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"


def _pq() -> Any:
    import pyarrow.parquet as pq  # noqa: PLC0415  (pyarrow comes with our stack; imported when used)
    return pq


def read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing; expected the {what}") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not readable JSON ({exc}); expected the {what}") from exc


def _read_table(path: str, columns: Optional[Sequence[str]], what: str, episode: str = "") -> Any:
    """A parquet table; a missing file or column is a DatasetError naming both."""
    pq = _pq()
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: missing{episode}; expected the {what}")
    try:
        names = pq.read_schema(path).names
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable parquet file ({exc}){episode}; expected the {what}") from exc
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise DatasetError(f"{path}: missing column '{missing[0]}'{episode}; expected the {what} with "
                               f"columns {list(columns)} (found {names})")
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read{episode} ({exc}); expected the {what}") from exc


def _to_matrix(col: Any) -> np.ndarray:
    """An arrow column of scalars or (fixed size) lists -> (N, D) numpy."""
    import pyarrow as pa  # noqa: PLC0415
    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    if pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        flat = arr.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(arr), -1) if len(arr) else flat.reshape(0, 0)
    return arr.to_numpy(zero_copy_only=False).reshape(-1, 1)


def _indexed_strings(path: str, name: str = "task") -> dict[int, str]:
    """``meta/tasks.parquet`` (a pandas frame indexed by the task string, column ``task_index``) ->
    {task_index: task}; the same for ``meta/subtasks.parquet`` with ``name='subtask'``."""
    table = _read_table(path, None, f"{name}s of the dataset ({name}_index + {name} strings)")
    names = table.schema.names
    text_col = name if name in names else None
    meta = table.schema.metadata or {}
    if text_col is None and b"pandas" in meta:
        idx = json.loads(meta[b"pandas"]).get("index_columns") or []
        text_col = idx[0] if idx and isinstance(idx[0], str) and idx[0] in names else None
    text_col = text_col or ("__index_level_0__" if "__index_level_0__" in names else None)
    if text_col is None or f"{name}_index" not in names:
        raise DatasetError(f"{path}: missing column '{name + '_index' if text_col else name}'; expected "
                           f"{name}_index and the {name} strings (column '{name}' or the pandas index); found {names}")
    return {int(i): str(t) for i, t in zip(table.column(f"{name}_index").to_pylist(),
                                           table.column(text_col).to_pylist())}


class LeRobotMeta:
    """``meta/`` of a v3.0 dataset: info, tasks, episodes (without their stats columns), stats."""

    EPISODE_COLUMNS = ("episode_index", "length", "dataset_from_index", "dataset_to_index",
                       "data/chunk_index", "data/file_index")

    def __init__(self, root: str):
        self.root = root
        self.info_path = os.path.join(root, "meta", "info.json")
        self.info = info = read_json(self.info_path, "LeRobot dataset info (meta/info.json)")
        version = info.get("codebase_version") if isinstance(info, dict) else None
        if version != SUPPORTED_VERSION:
            raise DatasetError(f"{self.info_path}: field 'codebase_version' is {version!r}; only LeRobot "
                               f"{SUPPORTED_VERSION!r} datasets are supported (convert v2.x ones with LeRobot's "
                               f"convert_dataset_v21_to_v30 first)")
        for field in ("features", "fps"):
            if field not in info:
                raise DatasetError(f"{self.info_path}: missing field '{field}'; expected a v3.0 info.json")
        self.features: dict[str, dict] = info["features"]
        self.fps = float(info["fps"])
        if self.fps <= 0:
            raise DatasetError(f"{self.info_path}: field 'fps' is {info['fps']!r}; expected a positive number")
        self.data_path = info.get("data_path") or DEFAULT_DATA_PATH
        self.video_path = info.get("video_path") or DEFAULT_VIDEO_PATH
        self.camera_keys = [k for k, v in self.features.items() if v.get("dtype") in ("video", "image")]
        self.video_keys = [k for k in self.camera_keys if self.features[k]["dtype"] == "video"]
        self._tasks = _indexed_strings(os.path.join(root, "meta", "tasks.parquet"))
        self.tasks = [self._tasks[i] for i in sorted(self._tasks)]
        stats_path = os.path.join(root, "meta", "stats.json")
        self.stats = read_json(stats_path, "stats") if os.path.isfile(stats_path) else None
        self._load_episodes()

    def _load_episodes(self) -> None:
        files = sorted(glob.glob(os.path.join(self.root, "meta", "episodes", "chunk-*", "file-*.parquet")))
        if not files:
            raise DatasetError(f"{os.path.join(self.root, 'meta', 'episodes')}: no chunk-XXX/file-XXX.parquet; "
                               f"expected the episodes metadata of a v3.0 dataset")
        need = list(self.EPISODE_COLUMNS)
        for key in self.video_keys:
            need += [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
        cols: dict[str, list] = {c: [] for c in need}
        for f in files:
            table = _read_table(f, need, "episodes metadata")
            for c in need:
                cols[c] += table.column(c).to_pylist()
        order = np.argsort(np.asarray(cols["episode_index"], dtype=np.int64), kind="stable")
        self.episodes = {c: [v[i] for i in order] for c, v in cols.items()}
        ep = np.asarray(self.episodes["episode_index"], dtype=np.int64)
        if len(ep) == 0 or not np.array_equal(ep, np.arange(len(ep))):
            raise DatasetError(f"{files[0]}: column 'episode_index' holds {ep.tolist()[:10]}; expected episodes "
                               f"0..N-1, each once")
        self.lengths = np.asarray(self.episodes["length"], dtype=np.int64)
        span = (np.asarray(self.episodes["dataset_to_index"], dtype=np.int64)
                - np.asarray(self.episodes["dataset_from_index"], dtype=np.int64))
        bad = np.nonzero((span != self.lengths) | (self.lengths <= 0))[0]
        if len(bad):
            e = int(bad[0])
            raise DatasetError(f"{files[0]}: episode {e} has length {int(self.lengths[e])} but dataset_to_index - "
                               f"dataset_from_index = {int(span[e])}; expected them equal and positive")

    def task(self, task_index: int) -> str:
        if task_index not in self._tasks:
            raise DatasetError(f"{self.root}/meta/tasks.parquet: no task with task_index {task_index}; expected "
                               f"one of {sorted(self._tasks)}")
        return self._tasks[task_index]

    def data_file(self, episode: int) -> str:
        e = self.episodes
        return os.path.join(self.root, self.data_path.format(chunk_index=e["data/chunk_index"][episode],
                                                             file_index=e["data/file_index"][episode]))

    def video_file(self, key: str, episode: int) -> str:
        e = self.episodes
        return os.path.join(self.root, self.video_path.format(
            video_key=key, chunk_index=e[f"videos/{key}/chunk_index"][episode],
            file_index=e[f"videos/{key}/file_index"][episode]))

    def check_video_files(self, key: str) -> None:
        for ep in range(len(self.lengths)):
            f = self.video_file(key, ep)
            if not os.path.isfile(f):
                raise DatasetError(f"{f}: missing video file of key '{key}', episode {ep}; expected the mp4 named "
                                   f"by meta/episodes videos/{key}/chunk_index and file_index")

    def subtask_strings(self, idx: np.ndarray) -> list[str]:
        """Per-step strings of ``subtask_index`` values (LeRobot 0.4-0.5's ``meta/subtasks.parquet``)."""
        lut = _indexed_strings(os.path.join(self.root, "meta", "subtasks.parquet"), "subtask")
        return [lut.get(int(i), "") for i in idx]

    def file_counts(self) -> dict[str, int]:
        out = {"data": len(set(zip(self.episodes["data/chunk_index"], self.episodes["data/file_index"])))}
        for key in self.video_keys:
            out[f"videos/{key}"] = len(set(zip(self.episodes[f"videos/{key}/chunk_index"],
                                               self.episodes[f"videos/{key}/file_index"])))
        return out


class ParquetColumns:
    """Columns of the data parquet files, rows ordered as our steps (episode, then frame)."""

    def __init__(self, meta: LeRobotMeta, columns: Sequence[str], image_cols: Sequence[str], verify: bool):
        import pyarrow as pa  # noqa: PLC0415
        files: dict[str, list[int]] = {}
        for ep in range(len(meta.lengths)):
            files.setdefault(meta.data_file(ep), []).append(ep)
        tables = []
        for f, eps in files.items():
            where = f" (episode {eps[0]}{'..' + str(eps[-1]) if len(eps) > 1 else ''})"
            tables.append(_read_table(f, list(columns) + list(image_cols), "frames of the dataset", where))
        table = pa.concat_tables(tables)
        ep = table.column("episode_index").to_numpy().astype(np.int64)
        fi = table.column("frame_index").to_numpy().astype(np.int64)
        order = np.lexsort((fi, ep))
        ends = np.cumsum(meta.lengths)
        if len(order) != int(ends[-1]):
            raise DatasetError(f"{meta.data_file(0)}: the data files hold {len(order)} frames; expected "
                               f"{int(ends[-1])} (the sum of the episode lengths in meta/episodes)")
        ep, fi = ep[order], fi[order]
        want_ep = np.repeat(np.arange(len(meta.lengths)), meta.lengths)
        want_fi = np.arange(len(order)) - np.repeat(ends - meta.lengths, meta.lengths)
        bad = np.nonzero((ep != want_ep) | (fi != want_fi))[0]
        if len(bad):
            e = int(want_ep[bad[0]])
            raise DatasetError(f"{meta.data_file(e)}: episode {e} rows (column 'episode_index'/'frame_index') "
                               f"are not frames 0..{int(meta.lengths[e]) - 1}; expected each episode's frames once")
        self.table = table.take(pa.array(order))
        self.task_index = self.table.column("task_index").to_numpy().astype(np.int64)
        self.timestamp = self.table.column("timestamp").to_numpy().astype(np.float64)
        self.files = files

    def matrix(self, col: str) -> np.ndarray:
        return _to_matrix(self.table.column(col))

    def strings(self, col: str) -> list[str]:
        return ["" if v is None else str(v) for v in self.table.column(col).to_pylist()]

    def image_bytes(self, col: str) -> list[Optional[bytes]]:
        vals = self.table.column(col).to_pylist()
        return [v.get("bytes") if isinstance(v, dict) else v for v in vals]
