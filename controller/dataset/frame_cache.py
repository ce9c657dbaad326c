"""Optional on-disk cache of resized frames (``GraspDataset(cache_dir=...)``).

Decoding a 480x640 frame and resizing it to 518x518 costs a few milliseconds per camera per sample;
with the cache each frame is processed once and later read back from a memory-mapped float16 file
``(K, C, h, w)`` (``*.f16``) with a per-frame "ready" byte (``*.ready``). Frames are filled lazily
by whichever process first needs them (DataLoader workers included: memmaps are opened per
process; the frame is written before its ready byte, and two workers filling the same frame write
identical bytes). float16 keeps [0, 1] values to within 2.5e-4 (1/16 of a uint8 step) and the
{0, 1} mask exactly.

Files are named by a hash of the store's absolute path, key, array shape, output size and the
array metadata's modification time, so a changed store gets a fresh cache. Nothing is deleted
automatically.

Filling is lazy, so the first epoch pays for decoding and resizing. To pay it up front (e.g. before
a CPU run, so that the loader does not compete with the training threads), fill the cache once::

    python -m controller.dataset.frame_cache CACHE_DIR STORE [STORE ...] --size 112 [--workers 2]

which is resumable (frames already marked ready are skipped) and shows progress.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from controller.dataset.image_ops import bgr_uint8_to_float_chw, rgbm_uint8_to_float_chw

_FNS = {"rgbm": rgbm_uint8_to_float_chw, "right_cam_img": bgr_uint8_to_float_chw}
_VERSION = 1


def _meta_mtime(store: str, key: str) -> float:
    for name in (".zarray", "zarr.json"):
        p = Path(store) / key / name
        if p.exists():
            return p.stat().st_mtime
    return Path(store).stat().st_mtime


class FrameCache:
    """Lazily filled float16 cache of preprocessed frames for several replay buffers."""

    def __init__(self, cache_dir: str | os.PathLike, replay_buffers: Sequence, image_sizes: Mapping[str, tuple]):
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.replay_buffers = list(replay_buffers)
        self.image_sizes = {k: tuple(int(s) for s in v) for k, v in image_sizes.items()}
        self._files: dict[tuple[int, str], tuple[Path, Path, tuple]] = {}
        for b, rb in enumerate(self.replay_buffers):
            for key, hw in self.image_sizes.items():
                arr = rb[key]
                c = int(arr.shape[-1])
                shape = (int(arr.shape[0]), c, *hw)
                ident = {"store": os.path.abspath(rb.path), "key": key, "src_shape": list(arr.shape),
                         "out": list(shape), "mtime": _meta_mtime(rb.path, f"data/{key}"), "v": _VERSION}
                digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
                stem = self.cache_dir / f"{Path(rb.path).name}.{key}.{digest}"
                data_p, ready_p = stem.with_suffix(".f16"), stem.with_suffix(".ready")
                if not data_p.exists() or not ready_p.exists():
                    np.lib.format.open_memmap(data_p, mode="w+", dtype=np.float16, shape=shape).flush()
                    np.lib.format.open_memmap(ready_p, mode="w+", dtype=np.uint8, shape=(shape[0],)).flush()
                    stem.with_suffix(".json").write_text(json.dumps(ident, indent=1))
                self._files[(b, key)] = (data_p, ready_p, shape)
        self._maps: dict[tuple[int, str], tuple[np.memmap, np.memmap]] = {}
        self._pid = None

    def _open(self, b: int, key: str) -> tuple[np.memmap, np.memmap]:
        if self._pid != os.getpid():  # new process (fork/spawn): reopen every map
            self._maps, self._pid = {}, os.getpid()
        if (b, key) not in self._maps:
            data_p, ready_p, _ = self._files[(b, key)]
            self._maps[(b, key)] = (np.load(data_p, mmap_mode="r+", allow_pickle=False),
                                    np.load(ready_p, mmap_mode="r+", allow_pickle=False))
        return self._maps[(b, key)]

    def get(self, b: int, key: str, step: int) -> np.ndarray:
        """Frame ``step`` of image ``key`` in buffer ``b`` as float32 (C, h, w)."""
        data, ready = self._open(b, key)
        if ready[step]:
            return np.asarray(data[step], dtype=np.float32)             # (C, h, w)
        frame = _FNS[key](self.replay_buffers[b][key][step], self.image_sizes[key])  # (C, h, w)
        data[step] = frame.astype(np.float16)
        ready[step] = 1
        return frame.astype(np.float16).astype(np.float32)           # same values as later hits

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"], state["_pid"] = {}, None
        return state

    def missing(self, b: int, key: str) -> np.ndarray:
        """Indices of the frames of buffer ``b`` / image ``key`` not yet in the cache."""
        _, ready = self._open(b, key)
        return np.flatnonzero(np.asarray(ready) == 0)


def _fill_part(args: tuple) -> int:
    cache_dir, paths, sizes, b, key, steps = args
    import torch

    from controller.dataset.replay_buffer import ZarrReplayBuffer
    torch.set_num_threads(1)  # one process per core: intra-op threads would only contend
    cache = FrameCache(cache_dir, [ZarrReplayBuffer.open(p, keys=list(sizes)) for p in paths], sizes)
    for step in steps:
        cache.get(b, key, int(step))
    return len(steps)


def fill(cache_dir: str, paths: Sequence[str], size: int, workers: int = 1, chunk: int = 256,
         progress: bool = True, keys: Optional[Sequence[str]] = None) -> int:
    """Fill the cache of ``paths`` at ``size`` x ``size`` for ``keys`` (default both images);
    returns the number of frames processed (0 when already complete)."""
    from tqdm import tqdm

    from controller.dataset.replay_buffer import ZarrReplayBuffer
    keys = list(keys or _FNS)
    sizes = {k: (int(size), int(size)) for k in keys}
    cache = FrameCache(cache_dir, [ZarrReplayBuffer.open(p, keys=keys) for p in paths], sizes)
    jobs = []
    for b in range(len(paths)):
        for key in keys:
            todo = cache.missing(b, key)
            jobs += [(str(cache_dir), list(paths), sizes, b, key, todo[i:i + chunk])
                     for i in range(0, len(todo), chunk)]
    total = sum(len(j[-1]) for j in jobs)
    bar = tqdm(total=total, desc="frame cache", unit="frame", disable=not progress)
    if workers <= 1:
        for job in jobs:
            bar.update(_fill_part(job))
    else:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(workers) as pool:
            for n in pool.imap_unordered(_fill_part, jobs):
                bar.update(n)
    bar.close()
    return total


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m controller.dataset.frame_cache``: fill a frame cache ahead of training."""
    import argparse
    import sys

    from controller.dataset.errors import DatasetError
    p = argparse.ArgumentParser(prog="python -m controller.dataset.frame_cache", description=main.__doc__)
    p.add_argument("cache_dir", help="the directory later passed as task.dataset.cache_dir")
    p.add_argument("stores", nargs="+", help="zarr stores (as in task.dataset_paths)")
    p.add_argument("--size", type=int, required=True, help="model image size (the preset's image_size)")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    if args.size < 14:
        print(f"error: --size must be >= 14, got {args.size}", file=sys.stderr)
        return 2
    try:
        n = fill(args.cache_dir, args.stores, args.size, args.workers)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"frame cache {args.cache_dir}: {n} frames filled" if n else f"frame cache {args.cache_dir}: already complete")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
