"""Lazy, fork-safe frame access over many HDF5 episode files (shared by ``act_h5`` and ``deployment``).

One :class:`LazyH5Frames` is one of our image keys over all episodes of a source: ``frames[step]``
opens (or reuses) the episode's file in this process, reads one row of each of its channel
datasets, decodes it (raw arrays, or JPEG bytes stored as variable-length uint8 rows or as
zero-padded fixed-size rows, as ALOHA exports do), converts RGB to BGR where the source is RGB and
stacks the channels: ``(H, W, 3)`` for a camera, ``(H, W, 4)`` for head + mask.

Files stay open in a small per-process pool (:data:`MAX_OPEN_FILES`, least recently used closed
first) that is dropped after a fork or unpickling, so a source built in the main process can be
used inside DataLoader workers.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections import OrderedDict
from typing import Any, Optional, Sequence

import numpy as np

from controller.dataset.errors import DatasetError

#: Most HDF5 files one process keeps open at once.
MAX_OPEN_FILES = 64
#: How an image dataset stores its frames.
KINDS = ("raw", "vlen", "padded")

__all__ = ["MAX_OPEN_FILES", "Channel", "LazyH5Frames", "h5_file", "natural_key", "list_h5_files",
           "as_text", "open_h5", "image_kind"]


def natural_key(name: str) -> list:
    """Sort key putting ``episode_2`` before ``episode_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_h5_files(path: str) -> list[str]:
    """``path`` itself if it is a file, else its ``*.hdf5`` / ``*.h5`` files in natural order."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        return []
    names = [n for n in os.listdir(path) if n.lower().endswith((".hdf5", ".h5")) and not n.startswith(".")]
    return [os.path.join(path, n) for n in sorted(names, key=natural_key)]


def open_h5(file: str) -> Any:
    """Open ``file`` read-only; a damaged or non-HDF5 file raises :class:`DatasetError` naming it."""
    import h5py  # noqa: PLC0415

    try:
        return h5py.File(file, "r")
    except OSError as exc:
        raise DatasetError(f"{file}: cannot open the HDF5 file ({exc}); expected a complete HDF5 episode "
                           f"file (truncated, or still being written?)") from exc


class _Pool:
    """Per-process LRU of open read-only HDF5 files."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.files: OrderedDict[str, Any] = OrderedDict()
        self.orphans: list = []  # a parent's handles after a fork: never closed from the child

    def get(self, file: str) -> Any:
        if self.pid != os.getpid():
            self.orphans.append(self.files)
            self.files, self.pid = OrderedDict(), os.getpid()
        f = self.files.get(file)
        if f is not None:
            self.files.move_to_end(file)
            return f
        f = self.files[file] = open_h5(file)
        while len(self.files) > MAX_OPEN_FILES:
            self.files.popitem(last=False)[1].close()
        return f


_POOL = _Pool()


def h5_file(file: str) -> Any:
    """The open read-only ``h5py.File`` of ``file`` in this process (pooled)."""
    return _POOL.get(file)


def as_text(value: Any) -> str:
    """bytes / numpy bytes / str / 0-d or 1-element array -> str (UTF-8)."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def image_kind(ds: Any) -> Optional[str]:
    """'raw' (T, H, W[, C]) uint8, 'vlen' (T,) variable-length uint8 rows, 'padded' (T, N) uint8
    byte rows (JPEG, zero padded), or None if ``ds`` is none of these."""
    import h5py  # noqa: PLC0415

    base = h5py.check_vlen_dtype(ds.dtype)
    if base is not None:
        return "vlen" if ds.ndim == 1 and np.dtype(base) == np.uint8 else None
    if ds.dtype != np.uint8:
        return None
    if ds.ndim in (3, 4):
        return "raw"
    return "padded" if ds.ndim == 2 else None


@dataclasses.dataclass(frozen=True)
class Channel:
    """One image dataset of one episode file and how to turn its rows into channels.

    ``rgb``: the stored images are RGB (converted to BGR); ``mask``: keep one channel (H, W, 1);
    ``channels``: the channels a frame must have otherwise (3, or 4 for our ``rgbm``);
    ``file`` None: an all-zero mask channel of ``size`` (H, W).
    """

    file: Optional[str]
    key: str
    kind: str = "raw"
    rgb: bool = False
    mask: bool = False
    size: tuple = ()
    channels: int = 3


def decode_row(ch: Channel, row: Any) -> np.ndarray:
    """One stored row -> (H, W, C) uint8 (C = 1 for a mask); ValueError if it does not decode."""
    if ch.kind in ("vlen", "padded"):
        import cv2  # noqa: PLC0415

        buf = np.asarray(row, dtype=np.uint8).reshape(-1)                  # (N,) encoded bytes
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
        if img is None:
            raise ValueError(f"{buf.size} bytes that cv2.imdecode cannot decode")
    else:
        img = np.asarray(row)
    if img.ndim == 2:
        img = img[:, :, None]                                              # (H, W, 1)
    if img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        raise ValueError(f"dtype {img.dtype}; expected uint8")
    if ch.mask:
        return np.ascontiguousarray(img[:, :, :1])                         # (H, W, 1)
    if img.shape[2] != ch.channels:
        raise ValueError(f"{img.shape[2]} channel(s); expected {ch.channels}")
    return np.ascontiguousarray(img[:, :, ::-1]) if ch.rgb else img         # (H, W, C) BGR[+mask]


def read_channel(ch: Channel, t: int) -> np.ndarray:
    """Frame ``t`` of one channel as (H, W, C) uint8 (ValueError/OSError on damaged data)."""
    if ch.file is None:
        return np.zeros((*ch.size, 1), np.uint8)                            # (H, W, 1) empty mask
    return decode_row(ch, h5_file(ch.file)[ch.key][t])


class LazyH5Frames:
    """(K, H, W, C) uint8 frames of one of our image keys over every episode of a source.

    Args:
        name: our key (for messages); episodes: per episode, the channels stacked into a frame;
        episode_ends: (J,) exclusive end steps; frame_shape: (H, W, C) every frame must have.
    """

    def __init__(self, name: str, episodes: Sequence[Sequence[Channel]], episode_ends: np.ndarray,
                 frame_shape: tuple):
        self.name = name
        self.episodes = [tuple(chs) for chs in episodes]
        self.ends = np.asarray(episode_ends, dtype=np.int64)
        self.shape = (int(self.ends[-1]) if len(self.ends) else 0, *[int(s) for s in frame_shape])
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4

    def frame(self, step: int) -> np.ndarray:
        """Frame at global ``step``: (H, W, C) uint8 BGR (+ mask)."""
        ep = int(np.searchsorted(self.ends, step, side="right"))
        t = step - (int(self.ends[ep - 1]) if ep else 0)
        parts = []
        for ch in self.episodes[ep]:
            try:
                parts.append(read_channel(ch, t))
            except DatasetError:
                raise
            except Exception as exc:  # h5py read errors, undecodable JPEG rows, wrong channel counts
                raise DatasetError(f"{ch.file}: key '{ch.key}' frame {t} of episode {ep} (step {step}) could not "
                                   f"be read ({type(exc).__name__}: {exc}); expected a {ch.kind} uint8 "
                                   f"image frame") from exc
        out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)  # (H, W, C)
        if out.shape != self.shape[1:]:
            ch = self.episodes[ep][0]
            raise DatasetError(f"{ch.file}: key '{ch.key}' frame {t} of episode {ep} gives '{self.name}' shape "
                               f"{out.shape}; expected {self.shape[1:]} (all frames of a key share one size)")
        return out

    def __getitem__(self, idx: Any) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self.frame(range(self.shape[0])[int(idx)])
        if isinstance(idx, slice):
            steps = range(self.shape[0])[idx]
        elif idx is Ellipsis:
            steps = range(self.shape[0])
        else:
            steps = np.asarray(idx, dtype=np.int64).reshape(-1)
        frames = [self.frame(range(self.shape[0])[int(s)]) for s in steps]
        return np.stack(frames) if frames else np.zeros((0, *self.shape[1:]), np.uint8)  # (N, H, W, C)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out.astype(dtype) if dtype is not None else out

    def __repr__(self) -> str:
        return f"LazyH5Frames({self.name!r}, shape={self.shape}, episodes={len(self.episodes)})"
