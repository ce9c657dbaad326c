"""Read-only replay buffer over a zarr store in the reference layout.

Layout (DESIGN.md section 1)::

    data/right_cam_img  (K, H, W, 3) uint8   wrist camera, BGR
    data/rgbm           (K, H, W, 4) uint8   head camera BGR + target mask (0/1 or 0/255)
    data/right_state    (K, 13)      float
    data/action         (K, 13)      float
    meta/episode_ends   (J,)         int     exclusive end of each episode

Both zarr v2 stores (as zarr 2.x wrote them) and v3 stores are read, from a directory or a
``.zip``. Images stay on disk and are read one frame at a time through :class:`LazyZarrArray`
(whose zarr handle is reopened in each process, so it is safe in forked DataLoader workers);
low-dimensional arrays and ``episode_ends`` are loaded into memory. Every inconsistency raises
:class:`~controller.dataset.errors.DatasetError` naming the path, the key and what was expected.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import zarr

from controller.dataset.errors import (DATA_GROUP, DEFAULT_KEYS, EPISODE_ENDS_KEY, IMAGE_CHANNELS,
                                       LOW_DIM_DIMS, DatasetError)

__all__ = ["DatasetError", "LazyZarrArray", "ZarrReplayBuffer", "open_zarr_group", "describe_codecs"]


def open_zarr_group(path: str | os.PathLike, mode: str = "r") -> zarr.Group:
    """Open the zarr group at ``path`` (directory or ``.zip``), raising :class:`DatasetError`."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{path}: no such file or directory (expected a zarr store)")
    try:
        if p.is_file() and p.suffix == ".zip":
            if mode != "r":
                raise DatasetError(f"{path}: zip stores can only be opened read-only")
            store = zarr.storage.ZipStore(str(p), mode="r")
            return zarr.open_group(store, mode="r")
        return zarr.open_group(str(p), mode=mode)
    except DatasetError:
        raise
    except Exception as exc:  # zarr raises several types for "not a group"
        raise DatasetError(f"{path}: not a readable zarr group ({type(exc).__name__}: {exc})") from exc


def describe_codecs(arr: Any) -> str:
    """Short human-readable description of an array's compressor(s)."""
    try:
        comps = tuple(arr.compressors or ())
    except Exception:  # pragma: no cover - very old/unknown array types
        comps = ()
    if not comps:
        return "none"
    out = []
    for c in comps:
        if hasattr(c, "cname") and hasattr(c, "clevel"):  # Blosc (numcodecs v2 or zarr v3 codec)
            val = lambda v: getattr(v, "value", v)  # noqa: E731 - enums -> plain values
            shuffle = val(getattr(c, "shuffle", ""))
            names = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle", -1: "auto"}
            shuffle = names.get(shuffle, shuffle) if isinstance(shuffle, int) else shuffle
            out.append(f"blosc({val(c.cname)}, clevel={val(c.clevel)}, {shuffle})")
        else:
            out.append(str(c))
    return ", ".join(out)


class LazyZarrArray:
    """Read-only, picklable, fork-safe handle to one array of a zarr store.

    The underlying zarr array is opened on first access in each process (keyed by pid), so a
    buffer built in the main process can be used inside forked or spawned DataLoader workers.
    Indexing returns numpy arrays; integer indexing reads only the chunk(s) holding that frame.
    """

    def __init__(self, store_path: str, key: str, shape: tuple, dtype: np.dtype, chunks: tuple,
                 array: Any = None):
        self.store_path = str(store_path)
        self.key = key
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.chunks = tuple(int(c) for c in chunks)
        self.ndim = len(self.shape)
        self._arr = array
        self._pid = os.getpid() if array is not None else None

    def _array(self) -> Any:
        if self._arr is None or self._pid != os.getpid():
            self._arr = open_zarr_group(self.store_path, mode="r")[self.key]
            self._pid = os.getpid()
        return self._arr

    def __getitem__(self, idx: Any) -> np.ndarray:
        return np.asarray(self._array()[idx])

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[...]
        return out.astype(dtype) if dtype is not None else out

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arr"], state["_pid"] = None, None  # never pickle a live zarr handle
        return state

    def __repr__(self) -> str:
        return f"LazyZarrArray({self.store_path!r}, {self.key!r}, shape={self.shape}, dtype={self.dtype})"


def _first_bad_episode(ends: np.ndarray) -> Optional[int]:
    """Index of the first episode whose end is not strictly after the previous one (or <= 0)."""
    starts = np.concatenate([[0], ends[:-1]])
    bad = np.nonzero(ends <= starts)[0]
    return int(bad[0]) if len(bad) else None


class ZarrReplayBuffer:
    """Validated, read-only view of one zarr dataset (see module docstring for the layout).

    Use :meth:`open`; ``buffer[key]`` gives a numpy array (low-dim keys) or a
    :class:`LazyZarrArray` (image keys) of length :attr:`n_steps`.
    """

    def __init__(self, path: str, zarr_format: int, episode_ends: np.ndarray,
                 data: Mapping[str, Any], array_info: Mapping[str, dict]):
        self.path = str(path)
        self.zarr_format = int(zarr_format)
        self._episode_ends = np.asarray(episode_ends, dtype=np.int64)
        self._episode_ends.setflags(write=False)
        self._data = dict(data)
        self.array_info = dict(array_info)

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(cls, path: str | os.PathLike, keys: Optional[Iterable[str]] = DEFAULT_KEYS,
             low_dim_dims: Optional[Mapping[str, int]] = None, check_finite: bool = True,
             ) -> "ZarrReplayBuffer":
        """Open and validate a store.

        Args:
            path: directory (or ``.zip``) of a zarr v2 or v3 group.
            keys: names under ``data/`` to expose; ``None`` means every array found there. Image
                keys (``right_cam_img``, ``rgbm``) stay lazy, everything else is loaded.
            low_dim_dims: expected width of low-dim keys (default 13 for state and action);
                a key mapped to ``None`` is not width-checked.
            check_finite: raise if a low-dim array holds NaN or inf.

        Raises:
            DatasetError: naming the path and key for any missing/malformed/inconsistent array.
        """
        path = str(path)
        root = open_zarr_group(path, mode="r")
        dims = dict(LOW_DIM_DIMS)
        dims.update(dict(low_dim_dims or {}))
        if keys is None:
            data_grp = _require_group(root, path, DATA_GROUP)
            keys = sorted(k for k, _ in data_grp.arrays())
        keys = [str(k) for k in keys]
        if not keys:
            raise DatasetError(f"{path}: no keys requested/found under '{DATA_GROUP}/'")

        ends = _read_episode_ends(root, path)
        data: dict[str, Any] = {}
        info: dict[str, dict] = {}
        lengths: dict[str, int] = {}
        for key in keys:
            full = f"{DATA_GROUP}/{key}"
            arr = _require_array(root, path, full)
            shape, dtype = tuple(int(s) for s in arr.shape), np.dtype(arr.dtype)
            _check_array(path, key, shape, dtype, dims.get(key))
            info[key] = {"shape": shape, "dtype": dtype, "chunks": tuple(arr.chunks),
                         "compressor": describe_codecs(arr)}
            lengths[key] = shape[0]
            if key in IMAGE_CHANNELS or len(shape) > 2:
                data[key] = LazyZarrArray(path, full, shape, dtype, arr.chunks, array=arr)
            else:
                data[key] = np.asarray(arr[...])
        _check_lengths(path, ends, lengths)
        if check_finite:
            for key, val in data.items():
                if isinstance(val, np.ndarray) and val.dtype.kind == "f" and not np.isfinite(val).all():
                    step = int(np.nonzero(~np.isfinite(val.reshape(len(val), -1)).all(axis=1))[0][0])
                    ep = int(np.searchsorted(ends, step, side="right"))
                    raise DatasetError(f"{path}: key '{DATA_GROUP}/{key}' has NaN/inf values "
                                       f"(first at step {step}, episode {ep}); expected finite values")
        zarr_format = int(getattr(root.metadata, "zarr_format", 2))
        return cls(path, zarr_format, ends, data, info)

    # ------------------------------------------------------------------ accessors
    @property
    def episode_ends(self) -> np.ndarray:
        """(J,) int64 exclusive end step of each episode (read-only)."""
        return self._episode_ends

    @property
    def episode_starts(self) -> np.ndarray:
        """(J,) int64 first step of each episode."""
        return np.concatenate([[0], self._episode_ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        """(J,) int64 number of steps of each episode."""
        return self._episode_ends - self.episode_starts

    @property
    def n_episodes(self) -> int:
        return int(len(self._episode_ends))

    @property
    def n_steps(self) -> int:
        return int(self._episode_ends[-1]) if len(self._episode_ends) else 0

    def keys(self) -> list[str]:
        return list(self._data.keys())

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __getitem__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise KeyError(f"{self.path}: key '{key}' was not loaded (available: {self.keys()})") from None

    def __len__(self) -> int:
        return self.n_steps

    def get_episode(self, idx: int, keys: Optional[Iterable[str]] = None) -> dict[str, np.ndarray]:
        """All steps of episode ``idx`` as numpy arrays (images are read from disk)."""
        idx = range(self.n_episodes)[idx]
        start, end = int(self.episode_starts[idx]), int(self._episode_ends[idx])
        return {k: np.asarray(self._data[k][start:end]) for k in (keys or self.keys())}

    def __repr__(self) -> str:
        return (f"ZarrReplayBuffer({self.path!r}, zarr v{self.zarr_format}, "
                f"{self.n_episodes} episodes, {self.n_steps} steps, keys={self.keys()})")


# ---------------------------------------------------------------------- validation helpers
def _require_group(root: zarr.Group, path: str, name: str) -> zarr.Group:
    try:
        node = root[name]
    except KeyError:
        raise DatasetError(f"{path}: missing group '{name}' (expected the reference layout with "
                           f"'{DATA_GROUP}/' and 'meta/')") from None
    if not isinstance(node, zarr.Group):
        raise DatasetError(f"{path}: key '{name}' is an array; expected a group")
    return node


def _require_array(root: zarr.Group, path: str, key: str) -> zarr.Array:
    group_name = key.rsplit("/", 1)[0]
    grp = _require_group(root, path, group_name)
    name = key.rsplit("/", 1)[1]
    try:
        node = grp[name]
    except KeyError:
        found = sorted(k for k, _ in grp.arrays())
        raise DatasetError(f"{path}: missing key '{key}' (found under '{group_name}/': "
                           f"{found or 'nothing'})") from None
    if not isinstance(node, zarr.Array):
        raise DatasetError(f"{path}: key '{key}' is a group; expected an array")
    return node


def _check_array(path: str, key: str, shape: tuple, dtype: np.dtype, dim: Optional[int]) -> None:
    """Check one ``data/<key>`` array's rank, trailing shape and dtype."""
    full = f"{DATA_GROUP}/{key}"
    if key in IMAGE_CHANNELS:
        c = IMAGE_CHANNELS[key]
        if len(shape) != 4 or shape[3] != c or shape[1] <= 0 or shape[2] <= 0:
            raise DatasetError(f"{path}: key '{full}' has shape {shape}; expected (K, H, W, {c})")
        if dtype != np.uint8:
            raise DatasetError(f"{path}: key '{full}' has dtype {dtype}; expected uint8")
    elif key in LOW_DIM_DIMS or dim is not None:
        if len(shape) != 2 or (dim is not None and shape[1] != dim):
            want = f"(K, {dim})" if dim is not None else "(K, D)"
            raise DatasetError(f"{path}: key '{full}' has shape {shape}; expected {want}")
        if dtype.kind != "f":
            raise DatasetError(f"{path}: key '{full}' has dtype {dtype}; expected a float dtype "
                               f"(float32/float64)")
    elif len(shape) < 1:
        raise DatasetError(f"{path}: key '{full}' is a scalar; expected a per-step array (K, ...)")


def _read_episode_ends(root: zarr.Group, path: str) -> np.ndarray:
    """Load and check ``meta/episode_ends``: 1-D, integer, non-empty, strictly increasing."""
    arr = _require_array(root, path, EPISODE_ENDS_KEY)
    if len(arr.shape) != 1:
        raise DatasetError(f"{path}: key '{EPISODE_ENDS_KEY}' has shape {tuple(arr.shape)}; expected (J,)")
    if np.dtype(arr.dtype).kind not in "iu":
        raise DatasetError(f"{path}: key '{EPISODE_ENDS_KEY}' has dtype {arr.dtype}; expected an integer dtype")
    ends = np.asarray(arr[...]).astype(np.int64)
    if len(ends) == 0:
        raise DatasetError(f"{path}: key '{EPISODE_ENDS_KEY}' is empty; the dataset has no episodes")
    bad = _first_bad_episode(ends)
    if bad is not None:
        prev = 0 if bad == 0 else int(ends[bad - 1])
        kind = ("has zero length" if ends[bad] == prev else "ends before it starts")
        raise DatasetError(
            f"{path}: key '{EPISODE_ENDS_KEY}' is not strictly increasing: episode {bad} {kind} "
            f"(starts at {prev}, ends at {int(ends[bad])}); expected exclusive ends with every "
            f"episode at least 1 step long")
    return ends


def _check_lengths(path: str, ends: np.ndarray, lengths: Mapping[str, int]) -> None:
    """Every data array must have exactly ``episode_ends[-1]`` steps."""
    total = int(ends[-1])
    for key, n in lengths.items():
        if n == total:
            continue
        hint = ""
        if n > total:
            hint = (" (trailing steps of an interrupted recording? open the store once with "
                    "controller.dataset.writer.ZarrEpisodeWriter to truncate them)")
        raise DatasetError(f"{path}: key '{DATA_GROUP}/{key}' has {n} steps but "
                           f"'{EPISODE_ENDS_KEY}'[-1] is {total}; expected them to match{hint}")
