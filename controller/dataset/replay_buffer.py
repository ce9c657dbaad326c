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

Damaged chunks (zarr itself would read a missing chunk as the fill value, and a truncated blosc
chunk as garbage) are caught in three places, all raising
:class:`~controller.dataset.errors.ChunkError` naming the array, the chunk and its file:

* :meth:`ZarrReplayBuffer.open` stats every chunk file of the opened arrays (``verify_chunks``;
  cheap: no chunk is read) -- see :func:`check_chunk_files`;
* every read compares a blosc chunk's header with the bytes actually read (no extra I/O), and
  re-raises a codec error with the failing chunk named;
* ``python -m controller.dataset.inspect PATH --verify`` decodes every chunk.
"""
from __future__ import annotations

import itertools
import math
import os
import stat
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np
import zarr

#: ``data/<key>`` of the per-step reasoning ids (text, not a data key; same name as in writer.py).
REASONING_ID_KEY = "reasoning_id"

from controller.dataset.episodes import EpisodeArrays
from controller.dataset.errors import (DATA_GROUP, DEFAULT_KEYS, EPISODE_ENDS_KEY, IMAGE_CHANNELS,
                                       LOW_DIM_DIMS, ChunkError, DatasetError)

__all__ = ["ChunkError", "ChunkLayout", "DatasetError", "LazyZarrArray", "StoreFiles", "ZarrReplayBuffer",
           "blosc_header_problem", "check_chunk_files", "chunk_error", "chunk_file_problems", "chunk_read_error",
           "chunk_size_problem", "describe_codecs", "guard_blosc_chunks", "open_zarr_group"]

#: Size of a blosc (v1 format) chunk header, and the most blosc adds to the uncompressed size.
BLOSC_HEADER = 16
#: Names of metadata objects inside an array's directory (never chunks).
_METADATA_NAMES = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"})


class _BloscGuard:
    """Store mixin: a blosc chunk whose header disagrees with the bytes read raises ChunkError.

    zarr hands a chunk's bytes to blosc, which trusts the length in the chunk's own header; a
    truncated file then decodes to garbage instead of failing. This check costs a 16-byte header
    parse per chunk read (no extra I/O). Only arrays registered with :func:`guard_blosc_chunks`
    (non-sharded, blosc as the only codec) are checked.
    """

    def guarded_arrays(self) -> dict:
        """Array key -> expected decoded chunk size, for the arrays this store checks."""
        if "_guarded" not in self.__dict__:
            self.__dict__["_guarded"] = {}
        return self.__dict__["_guarded"]

    def store_location(self) -> str:
        """The store's directory or zip file."""
        return str(self.path if isinstance(self, zarr.storage.ZipStore) else self.root)

    def chunk_location(self, key: str) -> str:
        """Where the object ``key`` lives (file path, or ``<zip>::key``)."""
        if isinstance(self, zarr.storage.ZipStore):
            return f"{self.path}::{key}"
        return os.path.join(str(self.root), key)

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        """Read ``key`` like the base store, then check a guarded blosc chunk's header."""
        if prototype is None:
            from zarr.core.buffer import default_buffer_prototype
            prototype = default_buffer_prototype()
        buf = await super().get(key, prototype, byte_range)  # type: ignore[misc]
        guarded = self.__dict__.get("_guarded")
        if buf is None or byte_range is not None or not guarded:
            return buf
        array, _, name = key.rpartition("/")
        if name in _METADATA_NAMES:
            return buf
        while array and array not in guarded:   # nested chunk keys: data/rgbm/c/3/0/0/0
            array = array.rpartition("/")[0]
        if not array:
            return buf
        rest = key[len(array) + 1:]
        problem = blosc_header_problem(bytes(buf.as_numpy_array()[:BLOSC_HEADER]), len(buf), guarded[array])
        if problem is not None:
            label, where = _label_from_key(rest), self.chunk_location(key)
            raise ChunkError(f"{self.store_location()}: key '{array}' chunk {label} ({where}) {problem[1]}; "
                             f"expected {problem[2]} (check the store with `python -m "
                             f"controller.dataset.inspect {self.store_location()} --verify`)",
                             array=array, chunk=label, file=where, kind=problem[0])
        return buf


class _GuardedLocalStore(_BloscGuard, zarr.storage.LocalStore):
    """Directory store with the blosc header check of :class:`_BloscGuard`."""


class _GuardedZipStore(_BloscGuard, zarr.storage.ZipStore):
    """Zip store with the blosc header check of :class:`_BloscGuard`."""


def open_zarr_group(path: str | os.PathLike, mode: str = "r") -> zarr.Group:
    """Open the zarr group at ``path`` (directory or ``.zip``), raising :class:`DatasetError`.

    Read-only groups use stores that check blosc chunk headers of the arrays registered with
    :func:`guard_blosc_chunks` (so a truncated chunk raises :class:`ChunkError`, not garbage).
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{path}: no such file or directory (expected a zarr store)")
    try:
        if p.is_file() and p.suffix == ".zip":
            if mode != "r":
                raise DatasetError(f"{path}: zip stores can only be opened read-only")
            store = _GuardedZipStore(str(p), mode="r")
            return zarr.open_group(store, mode="r")
        if mode == "r":
            return zarr.open_group(_GuardedLocalStore(str(p), read_only=True), mode="r")
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


# ---------------------------------------------------------------------- chunk files
def _is_blosc(codec: Any) -> bool:
    return type(codec).__name__ in ("Blosc", "BloscCodec")


def blosc_header_problem(head: bytes, size: int, nbytes: Optional[int]) -> Optional[tuple[str, str, str]]:
    """(kind, what is wrong, what was expected) for a blosc chunk of ``size`` bytes starting with ``head``.

    The blosc v1 header stores the decoded size at bytes 4-8 and the compressed size (the whole
    chunk, header included) at bytes 12-16. Returns None when both agree with what is expected.
    """
    if size < BLOSC_HEADER:
        return ("truncated", f"is truncated ({size} bytes)",
                f"a blosc chunk of at least {BLOSC_HEADER} bytes (its header)")
    decoded = int.from_bytes(head[4:8], "little")
    cbytes = int.from_bytes(head[12:16], "little")
    if nbytes is not None and decoded != nbytes:
        return ("bad header", f"is not a valid blosc chunk (its header says it decodes to {decoded} bytes)",
                f"a blosc chunk decoding to {nbytes} bytes")
    if cbytes != size:
        kind = "truncated" if cbytes > size else "trailing bytes"
        what = "is truncated" if cbytes > size else "has trailing bytes"
        return (kind, f"{what}: {size} bytes on disk but its blosc header says {cbytes}", f"{cbytes} bytes")
    return None


def _label_from_key(chunk_key: str) -> str:
    """Chunk key inside an array ('c/3/0/0/0', '3.0.0.0', '3/0/0/0') -> dotted coordinates '3.0.0.0'."""
    if chunk_key == "c" or chunk_key.startswith(("c/", "c.")):
        chunk_key = chunk_key[2:]
    return chunk_key.replace("/", ".") or "0"


class ChunkLayout:
    """Where the stored chunks of one zarr array are and how big they may be.

    With v3 sharding one stored object is a whole shard; the grid here is the grid of stored
    objects (chunks, or shards when sharded), the unit in which files can go missing.
    """

    def __init__(self, arr: Any):
        self.array = str(arr.path)
        self.shape = tuple(int(s) for s in arr.shape)
        shards = getattr(arr, "shards", None)
        self.sharded = shards is not None
        self.chunk_shape = tuple(int(c) for c in (shards if self.sharded else arr.chunks))
        self.grid = tuple(math.ceil(s / c) if c else 0 for s, c in zip(self.shape, self.chunk_shape))
        self.n_chunks = math.prod(self.grid)
        dtype = np.dtype(arr.dtype)
        self.nbytes: Optional[int] = (None if dtype.hasobject
                                      else math.prod(self.chunk_shape) * dtype.itemsize)
        fill = arr.fill_value
        self.fill_value = fill.item() if isinstance(fill, np.generic) else fill
        self.codecs = describe_codecs(arr)
        compressors, filters = tuple(arr.compressors or ()), tuple(arr.filters or ())
        plain_serializer = arr.metadata.zarr_format == 2 or type(arr.serializer).__name__ == "BytesCodec"
        self.blosc = (not self.sharded and not filters and len(compressors) == 1 and _is_blosc(compressors[0])
                      and plain_serializer and self.nbytes is not None)
        #: plausible on-disk size of one chunk file: [min_size, max_size] (None: no upper bound)
        self.min_size, self.max_size = 1, None
        if self.nbytes is not None and not self.sharded and not filters and plain_serializer:
            if not compressors:
                self.min_size = self.max_size = self.nbytes
            elif self.blosc:
                self.min_size, self.max_size = BLOSC_HEADER, self.nbytes + BLOSC_HEADER
        self._encode = arr.metadata.encode_chunk_key

    def coords(self, axis0: Optional[range] = None) -> Iterator[tuple[int, ...]]:
        """Grid coordinates of every stored chunk (only those in ``axis0`` along the first axis)."""
        if self.n_chunks == 0:
            return iter(())
        ranges = [range(g) for g in self.grid]
        if axis0 is not None and ranges:
            ranges[0] = range(max(axis0.start, 0), min(axis0.stop, self.grid[0]))
        return itertools.product(*ranges)

    def key(self, coords: tuple[int, ...]) -> str:
        """Store key of the chunk at ``coords``, e.g. 'data/rgbm/c/3/0/0/0' (v3) or 'data/rgbm/3.0.0.0'."""
        return f"{self.array}/{self._encode(coords)}"

    @staticmethod
    def label(coords: tuple[int, ...]) -> str:
        """Format-independent name of a chunk: its grid coordinates joined by dots ('3.0.0.0')."""
        return ".".join(str(c) for c in coords) or "0"

    def region(self, coords: tuple[int, ...]) -> tuple[slice, ...]:
        """Index of the part of the array the chunk at ``coords`` holds."""
        return tuple(slice(c * n, min((c + 1) * n, s)) for c, n, s in zip(coords, self.chunk_shape, self.shape))

    def span(self, coords: tuple[int, ...]) -> str:
        """Human-readable first-axis range of a chunk, e.g. 'steps 3..3' or 'episodes 0..1023'."""
        if not coords:
            return "the whole array"
        r = self.region(coords)[0]
        unit = ("steps" if self.array.startswith(f"{DATA_GROUP}/") else
                "episodes" if self.array == EPISODE_ENDS_KEY else "rows")
        return f"{unit} {r.start}..{r.stop - 1}"

    def expected_size(self) -> str:
        """What a healthy chunk file of this array looks like, for error messages."""
        if self.max_size is not None and self.min_size == self.max_size:
            return f"an uncompressed chunk file of exactly {self.min_size} bytes"
        if self.max_size is not None:
            return (f"a {self.codecs} chunk file of {self.min_size}..{self.max_size} bytes "
                    f"(decoding to {self.nbytes} bytes)")
        return f"a non-empty {'shard' if self.sharded else 'chunk'} file ({self.codecs})"


class StoreFiles:
    """Sizes and bytes of the objects of a directory or ``.zip`` zarr store, by store key.

    Directory stores cost one ``stat`` per :meth:`size`; a zip's central directory is read once.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        p = Path(path)
        self._zip: Optional[dict[str, int]] = None
        self._zf: Optional[zipfile.ZipFile] = None
        if p.is_file() and p.suffix == ".zip":
            self._zf = zipfile.ZipFile(p)
            self._zip = {info.filename: info.file_size for info in self._zf.infolist()}

    def size(self, key: str) -> Optional[int]:
        """Size in bytes of the object ``key``; None if it does not exist (or is not a file)."""
        if self._zip is not None:
            return self._zip.get(key)
        try:
            st = os.stat(os.path.join(self.path, key))
        except OSError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def read(self, key: str, n: Optional[int] = None) -> bytes:
        """The first ``n`` bytes (all if None) of the object ``key``."""
        if self._zf is not None:
            with self._zf.open(key) as f:
                return f.read(-1 if n is None else n)
        with open(os.path.join(self.path, key), "rb") as f:
            return f.read(-1 if n is None else n)

    def location(self, key: str) -> str:
        """The file holding ``key`` (``<zip>::key`` inside a zip)."""
        return f"{self.path}::{key}" if self._zip is not None else os.path.join(self.path, key)


def chunk_error(path: str, layout: ChunkLayout, coords: tuple[int, ...], files: StoreFiles,
                kind: str, what: str, expected: str) -> ChunkError:
    """A :class:`ChunkError` for the chunk at ``coords``: ``"<path>: key '<array>' chunk <label>
    (<file>, <steps>) <what>; expected <expected>"``."""
    key = layout.key(coords)
    label, where = layout.label(coords), files.location(key)
    return ChunkError(f"{path}: key '{layout.array}' chunk {label} ({where}, {layout.span(coords)}) {what}; "
                      f"expected {expected}", array=layout.array, chunk=label, file=where, kind=kind)


def chunk_size_problem(path: str, layout: ChunkLayout, coords: tuple[int, ...], files: StoreFiles,
                       size: Optional[int]) -> Optional[ChunkError]:
    """The problem with one chunk file of ``size`` bytes (None: missing), judged by size alone."""
    want = layout.expected_size()
    if size is None:
        return chunk_error(path, layout, coords, files, "missing", f"is missing (zarr would silently read "
                           f"it as the fill value {layout.fill_value!r})", want)
    if size == 0:
        return chunk_error(path, layout, coords, files, "empty", "is empty (0 bytes)", want)
    if size < layout.min_size:
        return chunk_error(path, layout, coords, files, "truncated", f"is truncated ({size} bytes)", want)
    if layout.max_size is not None and size > layout.max_size:
        return chunk_error(path, layout, coords, files, "too large", f"is too large ({size} bytes)", want)
    return None


def chunk_file_problems(path: str | os.PathLike, arrays: Iterable[Any], files: Optional[StoreFiles] = None,
                        progress: Any = None) -> list[ChunkError]:
    """Stat every chunk file the given zarr ``arrays`` of the store at ``path`` should have.

    Cheap (one ``stat`` per chunk, nothing is read or decoded). Finds missing files (which zarr
    would read as the fill value), empty ones and sizes no valid chunk can have (below the blosc
    header, above the uncompressed size + header, or not exactly the size of an uncompressed chunk).
    ``progress`` (e.g. a tqdm bar) is advanced by one per chunk. Returns one :class:`ChunkError` per
    bad chunk, in array and chunk order.
    """
    path = str(path)
    files = files or StoreFiles(path)
    problems: list[ChunkError] = []
    for arr in arrays:
        layout = ChunkLayout(arr)
        lo, hi = layout.min_size, layout.max_size
        for coords in layout.coords():
            size = files.size(layout.key(coords))
            if size is None or size < lo or (hi is not None and size > hi):
                problems.append(chunk_size_problem(path, layout, coords, files, size))
            if progress is not None:
                progress.update(1)
    return problems


def check_chunk_files(path: str | os.PathLike, arrays: Iterable[Any]) -> int:
    """Start-up check: raise :class:`ChunkError` if any chunk file of ``arrays`` is missing or has an
    implausible size (see :func:`chunk_file_problems`); returns the number of chunk files checked."""
    arrays = list(arrays)
    problems = chunk_file_problems(path, arrays)
    if problems:
        first = problems[0]
        more = ""
        if len(problems) > 1:
            others = ", ".join(f"{p.array} chunk {p.chunk}" for p in problems[1:6])
            more = f" -- and {len(problems) - 1} more bad chunk(s): {others}{' ...' if len(problems) > 6 else ''}"
        raise ChunkError(f"{first}{more}. Run `python -m controller.dataset.inspect {path} --verify` for a "
                         f"full check, or set verify_chunks: false to skip this start-up check",
                         array=first.array, chunk=first.chunk, file=first.file, kind=first.kind)
    return sum(ChunkLayout(a).n_chunks for a in arrays)


def guard_blosc_chunks(arr: Any) -> Any:
    """Make reads of ``arr`` check each blosc chunk's header against the bytes read (if its store
    was opened by :func:`open_zarr_group`); a mismatch raises :class:`ChunkError`. Returns ``arr``."""
    store = getattr(arr, "store", None)
    if isinstance(store, _BloscGuard):
        layout = ChunkLayout(arr)
        if layout.blosc:
            store.guarded_arrays()[layout.array] = layout.nbytes
    return arr


def _axis0_chunks(idx: Any, n: int, chunk: int) -> Optional[range]:
    """Chunk indices along the first axis touched by ``idx`` (None: unknown, i.e. all)."""
    first = idx[0] if isinstance(idx, tuple) and idx else idx
    if isinstance(first, (int, np.integer)) and -n <= int(first) < n:
        c = (int(first) % n) // chunk
        return range(c, c + 1)
    if isinstance(first, slice):
        start, stop, _ = first.indices(n)
        return range(start // chunk, (stop - 1) // chunk + 1) if stop > start else range(0)
    return None


def chunk_read_error(path: str, arr: Any, exc: BaseException, idx: Any = None,
                     max_probe: int = 4096) -> DatasetError:
    """Turn an exception raised while reading ``arr[idx]`` into a :class:`ChunkError` naming the chunk.

    Slow path (only after a failure): decodes the chunks ``idx`` touches one by one (at most
    ``max_probe``) to find the first that fails.
    """
    if isinstance(exc, DatasetError):
        return exc
    layout = ChunkLayout(arr)
    axis0 = _axis0_chunks(idx, layout.shape[0], layout.chunk_shape[0]) if layout.shape else None
    files = StoreFiles(path)
    for i, coords in enumerate(layout.coords(axis0)):
        if i >= max_probe:
            break
        try:
            arr[layout.region(coords)]
        except DatasetError as inner:
            return inner
        except Exception as inner:  # the codec's own error types vary (RuntimeError, ValueError, ...)
            return chunk_error(path, layout, coords, files, "undecodable",
                               f"could not be decoded ({type(inner).__name__}: {inner})",
                               f"{layout.expected_size()} that decodes (check the store with `python -m "
                               f"controller.dataset.inspect {path} --verify`)")
    return DatasetError(f"{path}: key '{layout.array}' could not be read ({type(exc).__name__}: {exc}); "
                        f"expected readable chunks (check the store with `python -m "
                        f"controller.dataset.inspect {path} --verify`)")


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
            self._arr = guard_blosc_chunks(open_zarr_group(self.store_path, mode="r")[self.key])
            self._pid = os.getpid()
        return self._arr

    def __getitem__(self, idx: Any) -> np.ndarray:
        arr = self._array()
        try:
            return np.asarray(arr[idx])
        except (IndexError, TypeError, DatasetError):  # a bad index, or a chunk already named
            raise
        except Exception as exc:  # codec errors (e.g. blosc's RuntimeError) -> name the chunk
            raise chunk_read_error(self.store_path, arr, exc, idx) from exc

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


class ZarrReplayBuffer(EpisodeArrays):
    """Validated, read-only view of one zarr dataset (see module docstring for the layout).

    Use :meth:`open`; ``buffer[key]`` gives a numpy array (low-dim keys) or a
    :class:`LazyZarrArray` (image keys) of length :attr:`n_steps`.
    """

    #: name of the format in :mod:`controller.dataset.formats` (this class is its reader).
    format_name = "zarr"

    def __init__(self, path: str, zarr_format: int, episode_ends: np.ndarray,
                 data: Mapping[str, Any], array_info: Mapping[str, dict]):
        self.path = str(path)
        self._text: Any = None  # ZarrText, read on first use
        self.zarr_format = int(zarr_format)
        self._episode_ends = np.asarray(episode_ends, dtype=np.int64)
        self._episode_ends.setflags(write=False)
        self._data = dict(data)
        self.array_info = dict(array_info)

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(cls, path: str | os.PathLike, keys: Optional[Iterable[str]] = DEFAULT_KEYS,
             low_dim_dims: Optional[Mapping[str, int]] = None, check_finite: bool = True,
             verify_chunks: bool = True) -> "ZarrReplayBuffer":
        """Open and validate a store.

        Args:
            path: directory (or ``.zip``) of a zarr v2 or v3 group.
            keys: names under ``data/`` to expose; ``None`` means every array found there. Image
                keys (``right_cam_img``, ``rgbm``) stay lazy, everything else is loaded.
            low_dim_dims: expected width of low-dim keys (default 13 for state and action);
                a key mapped to ``None`` is not width-checked.
            check_finite: raise if a low-dim array holds NaN or inf.
            verify_chunks: stat every chunk file of the opened arrays and raise if one is missing
                or has an impossible size (:func:`check_chunk_files`; nothing is decoded).

        Raises:
            DatasetError: naming the path and key for any missing/malformed/inconsistent array;
                :class:`ChunkError` (a subclass) naming the array, chunk and file for a damaged chunk.
        """
        path = str(path)
        root = open_zarr_group(path, mode="r")
        dims = dict(LOW_DIM_DIMS)
        dims.update(dict(low_dim_dims or {}))
        if keys is None:
            data_grp = _require_group(root, path, DATA_GROUP)
            keys = sorted(k for k, _ in data_grp.arrays() if k != REASONING_ID_KEY)  # text: reasoning()
        keys = [str(k) for k in keys]
        if not keys:
            raise DatasetError(f"{path}: no keys requested/found under '{DATA_GROUP}/'")

        if verify_chunks:  # before reading: a missing chunk of episode_ends would read as zeros
            check_chunk_files(path, [_require_array(root, path, EPISODE_ENDS_KEY)])
        ends = _read_episode_ends(root, path)
        arrays: dict[str, zarr.Array] = {}
        for key in keys:
            arr = arrays[key] = _require_array(root, path, f"{DATA_GROUP}/{key}")
            _check_array(path, key, tuple(int(s) for s in arr.shape), np.dtype(arr.dtype), dims.get(key))
        _check_lengths(path, ends, {key: int(arr.shape[0]) for key, arr in arrays.items()})
        if verify_chunks:
            check_chunk_files(path, arrays.values())
        data: dict[str, Any] = {}
        info: dict[str, dict] = {}
        for key, arr in arrays.items():
            full = f"{DATA_GROUP}/{key}"
            shape, dtype = tuple(int(s) for s in arr.shape), np.dtype(arr.dtype)
            guard_blosc_chunks(arr)
            info[key] = {"shape": shape, "dtype": dtype, "chunks": tuple(arr.chunks),
                         "compressor": describe_codecs(arr)}
            if key in IMAGE_CHANNELS or len(shape) > 2:
                data[key] = LazyZarrArray(path, full, shape, dtype, arr.chunks, array=arr)
            else:
                data[key] = _read_all(path, arr)
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
    # ------------------------------------------------------------------ text (EpisodeSource)
    def text(self) -> Any:
        """The store's :class:`~controller.dataset.formats.zarr_source.ZarrText` (read and checked once)."""
        if self._text is None:
            from controller.dataset.formats.zarr_source import ZarrText  # noqa: PLC0415
            self._text = ZarrText.load(self.path, self._episode_ends)
        return self._text

    def language(self, episode: int) -> Optional[str]:
        """Instruction of ``episode`` (``meta.attrs['language']``), None if the store has none."""
        return self.text().episode_language(range(self.n_episodes)[episode])

    def reasoning(self, step: int) -> Optional[str]:
        """Sub-step reasoning at global ``step`` (``data/reasoning_id``), None if none."""
        return self.text().step_reasoning(range(self.n_steps)[step])

    def describe(self) -> dict[str, Any]:
        """Format, path, episode/step counts, keys with shapes/dtypes/chunks, text presence, fps."""
        from controller.dataset.formats.zarr_source import describe_zarr  # noqa: PLC0415
        return describe_zarr(self)

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


def _read_all(path: str, arr: zarr.Array) -> np.ndarray:
    """``arr[...]`` as numpy; a codec error becomes a :class:`ChunkError` naming the chunk."""
    try:
        return np.asarray(arr[...])
    except DatasetError:
        raise
    except Exception as exc:  # codec errors (e.g. blosc's RuntimeError) -> name the chunk
        raise chunk_read_error(path, arr, exc) from exc


def _read_episode_ends(root: zarr.Group, path: str) -> np.ndarray:
    """Load and check ``meta/episode_ends``: 1-D, integer, non-empty, strictly increasing."""
    arr = _require_array(root, path, EPISODE_ENDS_KEY)
    if len(arr.shape) != 1:
        raise DatasetError(f"{path}: key '{EPISODE_ENDS_KEY}' has shape {tuple(arr.shape)}; expected (J,)")
    if np.dtype(arr.dtype).kind not in "iu":
        raise DatasetError(f"{path}: key '{EPISODE_ENDS_KEY}' has dtype {arr.dtype}; expected an integer dtype")
    ends = _read_all(path, guard_blosc_chunks(arr)).astype(np.int64)
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
