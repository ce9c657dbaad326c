"""The ``act_h5`` sink: our keys written as ACT / DexVLA HDF5 episodes (one ``episode_<i>.hdf5`` each).

Per file (T steps; images gzip-compressed, one frame per chunk)::

    action                          (T, D_action)  as given (float32 from our stores)
    language_raw                    (1,)           UTF-8 string ('' when the episode has none)
    substep_reasonings              (T,)           UTF-8 strings ('' where there is none)
    observations/images/head        (T, H, W, 3)   uint8 RGB  (from rgbm[..., :3], BGR -> RGB)
    observations/images/head_mask   (T, H, W)      uint8      (rgbm[..., 3] as it is, 0/1 or 0/255)
    observations/images/wrist       (T, H, W, 3)   uint8 RGB  (from right_cam_img)
    observations/qpos               (T, D_state)   right_state
    observations/qvel               (T, D_state)   zeros (unknown)
    attrs: sim=False, compress=False, fps

The :mod:`act_h5 reader <controller.dataset.formats.act_h5>` reads this back exactly with its
defaults (cameras ``head`` / ``wrist``, mask from ``head_mask``). Files go to a temporary directory
next to the destination, renamed onto it by :meth:`ActH5Sink.close` (:meth:`ActH5Sink.abort` removes it).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from controller.dataset.errors import DatasetError
from controller.dataset.formats.base import publish

__all__ = ["ActH5Sink", "write_act_episode"]

_KNOWN = ("rgbm", "right_cam_img", "right_state", "action")


def _image(f: Any, key: str, frames: np.ndarray) -> None:
    """Write (T, H, W[, C]) uint8 frames, one gzip chunk per frame."""
    f.create_dataset(key, data=frames, chunks=(1, *frames.shape[1:]), compression="gzip", compression_opts=4)


def write_act_episode(file: str | os.PathLike, data: Mapping[str, np.ndarray], language: Optional[str] = None,
                      reasoning: Optional[Sequence[Optional[str]]] = None, fps: Optional[float] = None) -> None:
    """Write one episode of our keys (``action`` required) to ``file`` in the layout above."""
    import h5py  # noqa: PLC0415

    file = os.fspath(file)
    unknown = sorted(set(data) - set(_KNOWN))
    if unknown:
        raise DatasetError(f"{file}: the act_h5 writer takes {list(_KNOWN)}; got unknown key(s) {unknown}")
    if "action" not in data:
        raise DatasetError(f"{file}: the act_h5 writer needs 'action'; got {sorted(data)}")
    eps = {k: np.asarray(v) for k, v in data.items()}
    lengths = {k: (len(v) if v.ndim else -1) for k, v in eps.items()}
    n = lengths["action"]
    if n < 1 or any(m != n for m in lengths.values()):
        raise DatasetError(f"{file}: episode arrays must share a length >= 1, got {lengths}")
    for k, c in (("rgbm", 4), ("right_cam_img", 3)):
        if k in eps and (eps[k].ndim != 4 or eps[k].shape[3] != c or eps[k].dtype != np.uint8):
            raise DatasetError(f"{file}: key '{k}' has shape {eps[k].shape} dtype {eps[k].dtype}; "
                               f"expected uint8 (T, H, W, {c})")
    if reasoning is not None and (isinstance(reasoning, str) or len(reasoning) != n):
        raise DatasetError(f"{file}: reasoning must be a list of {n} strings (one per step), got "
                           f"{'a str' if isinstance(reasoning, str) else f'{len(reasoning)} entries'}")
    text = h5py.string_dtype("utf-8")
    with h5py.File(file, "w") as f:
        f.attrs["sim"] = False
        f.attrs["compress"] = False
        if fps is not None:
            f.attrs["fps"] = float(fps)
        f.create_dataset("action", data=eps["action"])                                  # (T, D)
        f.create_dataset("language_raw", data=[language or ""], dtype=text)             # (1,)
        rows = [("" if r is None else str(r)) for r in (reasoning or [""] * n)]
        f.create_dataset("substep_reasonings", data=rows, dtype=text)                   # (T,)
        obs = f.create_group("observations")
        images = obs.create_group("images")
        if "rgbm" in eps:
            rgbm = eps["rgbm"]
            _image(images, "head", np.ascontiguousarray(rgbm[..., 2::-1]))              # (T, H, W, 3) RGB
            _image(images, "head_mask", np.ascontiguousarray(rgbm[..., 3]))              # (T, H, W)
        if "right_cam_img" in eps:
            _image(images, "wrist", np.ascontiguousarray(eps["right_cam_img"][..., ::-1]))  # (T, H, W, 3) RGB
        if "right_state" in eps:
            state = eps["right_state"]
            obs.create_dataset("qpos", data=state)                                      # (T, D)
            obs.create_dataset("qvel", data=np.zeros_like(state))                       # (T, D)


class ActH5Sink:
    """Writes episodes as ``episode_<i>.hdf5`` in a temporary directory renamed onto ``path`` by close().

    Args:
        path: destination directory; fps: stored as the files' ``fps`` attr; overwrite: replace
        an existing destination at close().
    """

    def __init__(self, path: str | os.PathLike, fps: float = 20.0, overwrite: bool = False, **_: Any):
        self.path = os.fspath(path)
        dest = Path(self.path)
        self.fps, self.overwrite = float(fps), bool(overwrite)
        self.tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.n_episodes = 0
        self.closed = False

    def add_episode(self, data: Mapping[str, np.ndarray], language: Optional[str] = None,
                    reasoning: Optional[Sequence[Optional[str]]] = None) -> None:
        """Write episode ``n_episodes`` (our keys, each (T, ...)) to its own file."""
        write_act_episode(self.tmp / f"episode_{self.n_episodes}.hdf5", data, language, reasoning, self.fps)
        self.n_episodes += 1

    def close(self) -> None:
        """Publish the directory at ``path`` (DatasetError, nothing published, if no episode was added)."""
        if self.closed:
            return
        if self.n_episodes == 0:
            self.abort()
            raise DatasetError(f"{self.path}: no episodes were written; nothing to publish")
        try:
            publish(self.tmp, self.path, self.overwrite)
        except DatasetError:
            self.abort()
            raise
        self.closed = True

    def abort(self) -> None:
        """Remove the temporary directory; the destination is left untouched."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.closed = True

    def __enter__(self) -> "ActH5Sink":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
