"""Attention-map files: one compressed ``.npz`` per prediction call (no pickle).

The policy records, for every denoising step and every DiT block, the cross-attention weights
of the *first* action token over all condition tokens (per head) for the first ``B`` samples of
the batch, together with the observations that produced them. :func:`save_attention_maps`
writes such a file atomically after validating it; :func:`load_attention_maps` reads one back
(``allow_pickle=False``) into an :class:`AttentionMaps` and applies the same validation, so a
bad file is reported with its path and the offending field rather than as a shape error deep
inside the visualiser.

Keys (S denoising steps, L blocks, B samples, Hh heads, N condition tokens):

=================== ===================== =====================================================
key                 dtype / shape         meaning
=================== ===================== =====================================================
``attn``            float16 (S,L,B,Hh,N)  softmax weights (before dropout); rows sum to 1 over N
``timesteps``       int64 (S,)            diffusion timestep of each step, in the order run
``token_part_names`` str (P,)             e.g. ``['head', 'wrist', 'state', 'time']``
``token_part_sizes`` int64 (P,)           tokens per part; sums to N
``head_grid``       int64 (2,)            (rows, cols) patch grid of the head image
``wrist_grid``      int64 (2,)            (rows, cols) patch grid of the wrist image
``rgbm``            uint8 (B,H,W,4)       head image BGR + target mask (0/255) as fed to model
``right_cam_img``   uint8 (B,H,W,3)       wrist image, BGR
``right_state``     float32 (B,D)         proprioceptive state (D = 13)
``meta_json``       str scalar, optional  JSON object, e.g. ``{"epoch": 3, "split": "train"}``
``format_version``  int64 scalar          currently 1 (optional when reading)
=================== ===================== =====================================================

Patch tokens of a part are laid out row-major over its grid (token ``r * cols + c``), which is
the order a ViT emits them.
"""
from __future__ import annotations

import json
import os
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = [
    "AttentionMapFileError",
    "AttentionMaps",
    "FORMAT_VERSION",
    "GRID_PARTS",
    "REQUIRED_KEYS",
    "load_attention_maps",
    "save_attention_maps",
    "to_uint8_hwc",
]

FORMAT_VERSION = 1
#: token parts that are image patch grids, and the field holding each grid's (rows, cols)
GRID_PARTS = {"head": "head_grid", "wrist": "wrist_grid"}
REQUIRED_KEYS = ("attn", "timesteps", "token_part_names", "token_part_sizes", "head_grid",
                 "wrist_grid", "rgbm", "right_cam_img", "right_state")
#: tolerated deviation of an attention row's sum from 1 (float16 storage, bf16 compute)
ROW_SUM_ATOL = 2e-2


class AttentionMapFileError(ValueError):
    """An attention-map file is missing, unreadable, incomplete or inconsistent."""


def _to_numpy(x: Any) -> np.ndarray:
    """``np.asarray`` that also accepts (CPU/GPU, bf16, grad-tracking) torch tensors."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _int_vector(name: str, value: Any, length: int | None = None) -> tuple[int, ...]:
    arr = _to_numpy(value)
    if arr.ndim != 1 or (length is not None and arr.shape[0] != length):
        want = f"({length},)" if length is not None else "1-D"
        raise ValueError(f"{name}: expected shape {want}, got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name}: expected integers, got dtype {arr.dtype}")
    return tuple(int(v) for v in arr)


@dataclass(frozen=True, eq=False)
class AttentionMaps:
    """The contents of one attention-map file (validated on construction).

    Arrays are coerced to the file's dtypes (``attn`` float16, images uint8 is *required*, state
    float32); ``source`` is the file the maps were read from, used in error messages.
    """

    attn: np.ndarray
    timesteps: np.ndarray
    token_part_names: tuple[str, ...]
    token_part_sizes: tuple[int, ...]
    head_grid: tuple[int, int]
    wrist_grid: tuple[int, int]
    rgbm: np.ndarray
    right_cam_img: np.ndarray
    right_state: np.ndarray
    meta: dict = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:  # noqa: C901 - one linear list of checks
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass

        attn = _to_numpy(self.attn)
        if attn.ndim != 5:
            raise ValueError(f"attn: expected 5-D (steps, blocks, samples, heads, tokens), "
                             f"got shape {attn.shape}")
        if not np.issubdtype(attn.dtype, np.floating):
            raise ValueError(f"attn: expected a floating dtype, got {attn.dtype}")
        if min(attn.shape) == 0:
            raise ValueError(f"attn: every dimension must be non-empty, got shape {attn.shape}")
        attn = np.ascontiguousarray(attn, dtype=np.float16)
        S, L, B, Hh, N = attn.shape
        a32 = attn.astype(np.float32)
        if not np.all(np.isfinite(a32)):
            raise ValueError("attn: contains NaN or infinite values")
        if a32.min() < -1e-3:
            raise ValueError(f"attn: attention weights must be >= 0, found {a32.min():.3g}")
        sums = a32.sum(axis=-1)
        if np.abs(sums - 1.0).max() > ROW_SUM_ATOL:
            raise ValueError(
                "attn: each row must sum to 1 over the N condition tokens (softmax weights, "
                f"taken before dropout); sums range over [{sums.min():.4g}, {sums.max():.4g}]")
        put("attn", attn)

        ts = _to_numpy(self.timesteps)
        if ts.shape != (S,):
            raise ValueError(f"timesteps: expected shape ({S},) to match attn's {S} denoising "
                             f"steps, got {ts.shape}")
        put("timesteps", np.asarray(_int_vector("timesteps", ts), dtype=np.int64))

        names_arr = _to_numpy(self.token_part_names)
        if names_arr.ndim != 1 or names_arr.size == 0:
            raise ValueError(f"token_part_names: expected a non-empty 1-D list of names, "
                             f"got shape {names_arr.shape}")
        names = tuple(str(n) for n in names_arr.tolist())
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"token_part_names: names must be non-empty and unique, got {names}")
        put("token_part_names", names)
        sizes = _int_vector("token_part_sizes", self.token_part_sizes)
        if len(sizes) != len(names):
            raise ValueError(f"token_part_sizes: expected {len(names)} sizes (one per name in "
                             f"{list(names)}), got {len(sizes)}")
        if any(s <= 0 for s in sizes):
            raise ValueError(f"token_part_sizes: sizes must be positive, got {list(sizes)}")
        if sum(sizes) != N:
            raise ValueError(f"token_part_sizes: {list(sizes)} sum to {sum(sizes)} but attn has "
                             f"N={N} condition tokens")
        put("token_part_sizes", sizes)

        for part, key in GRID_PARTS.items():
            grid = _int_vector(key, getattr(self, key), length=2)
            if part not in names:
                raise ValueError(f"token_part_names: must contain '{part}' (for {key}), "
                                 f"got {list(names)}")
            n_part = sizes[names.index(part)]
            if grid[0] <= 0 or grid[1] <= 0 or grid[0] * grid[1] != n_part:
                raise ValueError(f"{key}: {grid[0]}x{grid[1]} does not match the {n_part} "
                                 f"'{part}' tokens")
            put(key, grid)

        def image(key: str, channels: int) -> np.ndarray:
            img = _to_numpy(getattr(self, key))
            if img.ndim != 4 or img.shape[-1] != channels:
                raise ValueError(f"{key}: expected shape (B, H, W, {channels}) channel-last, "
                                 f"got {img.shape}")
            if img.dtype != np.uint8:
                raise ValueError(f"{key}: expected dtype uint8 (use to_uint8_hwc for model "
                                 f"inputs), got {img.dtype}")
            if img.shape[0] != B:
                raise ValueError(f"{key}: has {img.shape[0]} samples but attn has B={B}")
            if img.shape[1] == 0 or img.shape[2] == 0:
                raise ValueError(f"{key}: empty image, shape {img.shape}")
            return np.ascontiguousarray(img)

        put("rgbm", image("rgbm", 4))
        put("right_cam_img", image("right_cam_img", 3))
        state = _to_numpy(self.right_state)
        if state.ndim != 2 or state.shape[0] != B:
            raise ValueError(f"right_state: expected shape ({B}, D), got {state.shape}")
        if not (np.issubdtype(state.dtype, np.floating) or np.issubdtype(state.dtype, np.integer)):
            raise ValueError(f"right_state: expected a numeric dtype, got {state.dtype}")
        put("right_state", np.ascontiguousarray(state, dtype=np.float32))

        meta = {} if self.meta is None else self.meta
        if not isinstance(meta, Mapping):
            raise ValueError(f"meta: expected a dict, got {type(meta).__name__}")
        try:
            meta = json.loads(json.dumps(dict(meta)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"meta: must be JSON-serialisable ({exc})") from None
        put("meta", meta)

    # ---- shape helpers ---------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return self.attn.shape[0]

    @property
    def num_blocks(self) -> int:
        return self.attn.shape[1]

    @property
    def num_samples(self) -> int:
        return self.attn.shape[2]

    @property
    def num_heads(self) -> int:
        return self.attn.shape[3]

    @property
    def num_tokens(self) -> int:
        return self.attn.shape[4]

    def part_slice(self, name: str) -> slice:
        """Token slice of the part ``name`` along the last axis of :attr:`attn`."""
        if name not in self.token_part_names:
            raise KeyError(f"no token part {name!r}; parts are {list(self.token_part_names)}")
        i = self.token_part_names.index(name)
        start = int(sum(self.token_part_sizes[:i]))
        return slice(start, start + self.token_part_sizes[i])

    def grid(self, name: str) -> tuple[int, int]:
        """(rows, cols) of an image part (``'head'`` or ``'wrist'``)."""
        if name not in GRID_PARTS:
            raise KeyError(f"token part {name!r} is not an image grid; grids: {list(GRID_PARTS)}")
        return getattr(self, GRID_PARTS[name])

    def summary(self) -> str:
        """One line: dimensions and token parts, for logs."""
        S, L, B, Hh, N = self.attn.shape
        parts = ", ".join(f"{n}={s}" for n, s in zip(self.token_part_names, self.token_part_sizes))
        return f"steps={S} blocks={L} samples={B} heads={Hh} tokens={N} ({parts})"

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The ``.npz`` payload (all plain arrays; strings as unicode, never objects)."""
        out = {
            "attn": self.attn,
            "timesteps": self.timesteps,
            "token_part_names": np.asarray(self.token_part_names, dtype=np.str_),
            "token_part_sizes": np.asarray(self.token_part_sizes, dtype=np.int64),
            "head_grid": np.asarray(self.head_grid, dtype=np.int64),
            "wrist_grid": np.asarray(self.wrist_grid, dtype=np.int64),
            "rgbm": self.rgbm,
            "right_cam_img": self.right_cam_img,
            "right_state": self.right_state,
            "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
        }
        if self.meta:
            out["meta_json"] = np.asarray(json.dumps(self.meta, sort_keys=True), dtype=np.str_)
        return out


def to_uint8_hwc(images: Any) -> np.ndarray:
    """Model-input images -> uint8 ``(B, H, W, C)`` for :func:`save_attention_maps`.

    Accepts float ``(B, C, H, W)`` in [0, 1] (a 0/1 mask channel becomes 0/255), or the same with
    a singleton observation-step axis ``(B, 1, C, H, W)``; uint8 channel-last input passes through.
    """
    x = _to_numpy(images)
    if x.ndim == 5 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 4:
        raise ValueError(f"images: expected (B, C, H, W) or (B, H, W, C), got {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x if x.shape[-1] in (3, 4) else x.transpose(0, 2, 3, 1))
    if x.shape[1] in (3, 4) and x.shape[-1] not in (3, 4):
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(np.clip(np.rint(x.astype(np.float32) * 255.0), 0, 255)
                                .astype(np.uint8))


def save_attention_maps(path, attn, timesteps, token_part_names, token_part_sizes, head_grid,
                        wrist_grid, rgbm, right_cam_img, right_state, meta=None) -> Path:
    """Validate and write one attention-map file atomically (temporary file + ``os.replace``).

    Arguments are arrays (numpy or torch) in the layout of the module docstring; ``attn`` is
    stored as float16. ``meta`` is an optional JSON-serialisable dict. Raises ``ValueError``
    naming the offending field. Returns the written path (which must end in ``.npz``).
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"path: attention-map files must end in .npz, got {str(path)!r}")
    maps = AttentionMaps(attn=attn, timesteps=timesteps, token_part_names=token_part_names,
                         token_part_sizes=token_part_sizes, head_grid=head_grid,
                         wrist_grid=wrist_grid, rgbm=rgbm, right_cam_img=right_cam_img,
                         right_state=right_state, meta=meta or {}, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden, uniquely named sibling (never matches "*.npz"); opened "x" so it gets the
    # normal umask permissions, then renamed over the target in one step.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            np.savez_compressed(fh, **maps.to_arrays())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_attention_maps(path) -> AttentionMaps:
    """Read and validate one attention-map file (never unpickles).

    Raises ``FileNotFoundError`` for a missing file and :class:`AttentionMapFileError` (a
    ``ValueError``) naming the file for an unreadable, incomplete or inconsistent one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"attention-map file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in REQUIRED_KEYS if k not in npz.files]
            if missing:
                raise AttentionMapFileError(
                    f"{path}: not a complete attention-map file, missing key(s) {missing} "
                    f"(found {sorted(npz.files)})")
            arrays = {k: npz[k] for k in (*REQUIRED_KEYS, "meta_json", "format_version")
                      if k in npz.files}
    except AttentionMapFileError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise AttentionMapFileError(
            f"{path}: cannot read attention-map file ({type(exc).__name__}: {exc})") from exc

    version = int(arrays.pop("format_version", FORMAT_VERSION))
    if version > FORMAT_VERSION:
        raise AttentionMapFileError(f"{path}: format_version {version} is newer than this "
                                    f"reader ({FORMAT_VERSION}); update the code")
    meta: dict = {}
    if "meta_json" in arrays:
        raw = arrays.pop("meta_json")
        try:
            meta = json.loads(str(raw[()]) if raw.ndim == 0 else str(raw.reshape(-1)[0]))
        except (ValueError, IndexError) as exc:
            raise AttentionMapFileError(f"{path}: meta_json is not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise AttentionMapFileError(f"{path}: meta_json must hold a JSON object, "
                                        f"got {type(meta).__name__}")
    try:
        return AttentionMaps(**arrays, meta=meta, source=str(path))
    except ValueError as exc:
        raise AttentionMapFileError(f"{path}: {exc}") from None

