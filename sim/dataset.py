"""Append-safe writer of episodes into the zarr layout the controller trains on (DESIGN.md §1).

Layout: ``data/right_cam_img`` (K,480,640,3) uint8 BGR, ``data/rgbm`` (K,480,640,4) uint8,
``data/right_state`` (K,13) float32, ``data/action`` (K,13) float32, ``meta/episode_ends`` (J,)
int64 exclusive ends. Images are chunked one frame per chunk and compressed with Blosc-LZ4.

Data arrays are written before ``episode_ends`` is extended, so an interrupted append leaves
frames past the last recorded end; they are trimmed the next time the store is opened.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr

IMAGE_KEYS = ("right_cam_img", "rgbm")
LOWDIM_KEYS = ("right_state", "action")


class DatasetError(ValueError):
    """Raised when an output store cannot be created or is incompatible."""


def _compressor(zarr_format: int):
    if zarr_format == 2:
        import numcodecs
        return numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.NOSHUFFLE)
    from zarr.codecs import BloscCodec
    return BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")


class ZarrEpisodeWriter:
    """Opens (or creates) a store and appends whole episodes to it.

    Args:
        path: directory of the zarr store.
        image_hw: (H, W) of the images.
        zarr_format: 2 (default, like the reference dataset) or 3; an existing store keeps its own.
    """

    def __init__(self, path: str | os.PathLike, image_hw: tuple[int, int] = (480, 640),
                 zarr_format: int = 2) -> None:
        if zarr_format not in (2, 3):
            raise DatasetError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
        self.path = Path(path)
        parent = self.path.parent if str(self.path.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"--out {self.path}: cannot create parent directory: {exc}") from exc
        if not os.access(parent, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            raise DatasetError(f"--out {self.path}: location is not writable")
        h, w = image_hw
        exists = self.path.exists() and any(self.path.iterdir()) if self.path.is_dir() else self.path.exists()
        if exists:
            try:
                self.root = zarr.open_group(str(self.path), mode="r+")
            except Exception as exc:
                raise DatasetError(f"--out {self.path}: exists but is not a zarr group: {exc}") from exc
            self._check_existing(h, w)
        else:
            self.root = zarr.open_group(str(self.path), mode="w", zarr_format=zarr_format)
            data, meta = self.root.create_group("data"), self.root.create_group("meta")
            comp = _compressor(zarr_format)
            for key, c in (("right_cam_img", 3), ("rgbm", 4)):
                data.create_array(key, shape=(0, h, w, c), chunks=(1, h, w, c), dtype="uint8",
                                  compressors=comp)
            for key in LOWDIM_KEYS:
                data.create_array(key, shape=(0, 13), chunks=(1024, 13), dtype="float32", compressors=comp)
            meta.create_array("episode_ends", shape=(0,), chunks=(1024,), dtype="int64", compressors=comp)
        self.data = self.root["data"]
        self.episode_ends = self.root["meta"]["episode_ends"]
        self._repair()

    def _check_existing(self, h: int, w: int) -> None:
        want = {"right_cam_img": (h, w, 3), "rgbm": (h, w, 4), "right_state": (13,), "action": (13,)}
        for key, tail in want.items():
            try:
                arr = self.root["data"][key]
            except KeyError:
                raise DatasetError(f"--out {self.path}: existing store lacks data/{key}") from None
            if tuple(arr.shape[1:]) != tail:
                raise DatasetError(f"--out {self.path}: data/{key} has frame shape {arr.shape[1:]}, expected {tail}")
        if "episode_ends" not in self.root["meta"]:
            raise DatasetError(f"--out {self.path}: existing store lacks meta/episode_ends")

    def _repair(self) -> None:
        """Trim frames written after the last complete episode (an interrupted append)."""
        end = int(self.episode_ends[-1]) if self.episode_ends.shape[0] else 0
        for key in IMAGE_KEYS + LOWDIM_KEYS:
            arr = self.data[key]
            if arr.shape[0] != end:
                arr.resize((end, *arr.shape[1:]))

    @property
    def n_frames(self) -> int:
        """Frames in complete episodes."""
        return int(self.episode_ends[-1]) if self.episode_ends.shape[0] else 0

    @property
    def n_episodes(self) -> int:
        """Complete episodes in the store."""
        return int(self.episode_ends.shape[0])

    def append_episode(self, frames: dict) -> None:
        """Append one episode: ``frames`` maps each data key to a list/array of per-step values."""
        arrays = {}
        n = None
        for key in IMAGE_KEYS + LOWDIM_KEYS:
            dtype = np.uint8 if key in IMAGE_KEYS else np.float32
            a = np.asarray(frames[key], dtype=dtype)
            if n is None:
                n = a.shape[0]
            if a.shape[0] != n or tuple(a.shape[1:]) != tuple(self.data[key].shape[1:]):
                raise DatasetError(f"episode {key}: shape {a.shape} does not match store {self.data[key].shape}")
            arrays[key] = a
        if not n:
            raise DatasetError("episode has no frames")
        start = self.n_frames
        for key, a in arrays.items():
            arr = self.data[key]
            arr.resize((start + n, *arr.shape[1:]))
            arr[start:start + n] = a
        j = self.n_episodes
        self.episode_ends.resize((j + 1,))
        self.episode_ends[j] = start + n

    def add_note(self, note: dict) -> None:
        """Append a provenance record (e.g. seeds, split) to the group attributes."""
        hist = list(self.root.attrs.get("sim_collect", []))
        hist.append(note)
        self.root.attrs["sim_collect"] = hist
