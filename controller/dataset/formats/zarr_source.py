"""The ``zarr`` format: our own reference layout (v2 or v3, directory or ``.zip``) as a source and a sink.

Reading is :class:`controller.dataset.replay_buffer.ZarrReplayBuffer`; this module registers it
with :func:`~controller.dataset.formats.base.register_format` and holds its text helpers.

Text storage (zarr v2 and v3 alike)::

    meta.attrs['language']          list[str], one per episode ('' = none); absent: no language
    meta.attrs['reasoning_vocab']   list[str], the distinct sub-step reasoning strings
    data/reasoning_id               int32 (K,), index into reasoning_vocab per step, -1 = none
    meta.attrs['fps']               float, written by the sink (optional)

``data/reasoning_id`` is not one of the data keys a buffer exposes (``keys()``): it is read only
through :meth:`ZarrReplayBuffer.reasoning`. The writer (:class:`~controller.dataset.writer.
ZarrEpisodeWriter`) writes the ids with the episode's arrays and the attrs before
``meta/episode_ends`` (metadata last), so an interrupted append never publishes text.

The ``zarr`` sink writes a fresh store under a temporary name next to the destination and renames
it onto the destination in :meth:`ZarrSink.close` (:meth:`ZarrSink.abort` removes it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from controller.dataset.errors import DATA_GROUP, META_GROUP, DatasetError
from controller.dataset.formats.base import SourceOptions, publish, register_format, register_sink, remove_path
from controller.dataset.writer import LANGUAGE_ATTR, REASONING_ID_KEY, VOCAB_ATTR

#: Attr of the ``meta`` group holding the frame rate (written by the sink).
FPS_ATTR = "fps"

__all__ = ["REASONING_ID_KEY", "LANGUAGE_ATTR", "VOCAB_ATTR", "ZarrText", "ZarrSink", "detect_zarr",
           "open_zarr_source", "describe_zarr"]


class ZarrText:
    """The text of one zarr store: per-episode language and per-step reasoning (all in memory).

    Attributes:
        language: one entry per episode (None: that episode has none), or None for no language.
        reasoning_ids: (K,) int32 index into ``vocab`` per step (-1: none), or None.
        vocab: the reasoning strings.
    """

    def __init__(self, language: Optional[list], reasoning_ids: Optional[np.ndarray], vocab: list):
        self.language = language
        self.reasoning_ids = reasoning_ids
        self.vocab = vocab

    @classmethod
    def load(cls, path: str, episode_ends: np.ndarray) -> "ZarrText":
        """Read and check the text of the store at ``path`` (see the module docstring)."""
        from controller.dataset.replay_buffer import _read_all, open_zarr_group  # noqa: PLC0415

        root = open_zarr_group(path, mode="r")
        n_eps, n_steps = len(episode_ends), int(episode_ends[-1]) if len(episode_ends) else 0
        attrs = dict(root[META_GROUP].attrs) if META_GROUP in root else {}
        language = attrs.get(LANGUAGE_ATTR)
        if language is not None:
            if not isinstance(language, list) or not all(isinstance(s, (str, type(None))) for s in language):
                raise DatasetError(f"{path}: attribute '{META_GROUP}.attrs[{LANGUAGE_ATTR}]' is not a list of "
                                   f"strings; expected one instruction per episode")
            if len(language) < n_eps:
                raise DatasetError(f"{path}: attribute '{META_GROUP}.attrs[{LANGUAGE_ATTR}]' has {len(language)} "
                                   f"entries but the store has {n_eps} episodes; expected one per episode")
            language = [s or None for s in language[:n_eps]]  # extra entries: an uncommitted append
        vocab = attrs.get(VOCAB_ATTR) or []
        if not isinstance(vocab, list) or not all(isinstance(s, str) for s in vocab):
            raise DatasetError(f"{path}: attribute '{META_GROUP}.attrs[{VOCAB_ATTR}]' is not a list of strings")
        ids = None
        data = root[DATA_GROUP] if DATA_GROUP in root else None
        if data is not None and REASONING_ID_KEY in data:
            arr = data[REASONING_ID_KEY]
            key = f"{DATA_GROUP}/{REASONING_ID_KEY}"
            if len(arr.shape) != 1 or np.dtype(arr.dtype).kind not in "iu":
                raise DatasetError(f"{path}: key '{key}' has shape {tuple(arr.shape)} and dtype {arr.dtype}; "
                                   f"expected (K,) int32")
            if int(arr.shape[0]) != n_steps:
                raise DatasetError(f"{path}: key '{key}' has {arr.shape[0]} steps but the episodes have "
                                   f"{n_steps}; expected them to match (an interrupted append? opening the store "
                                   f"with ZarrEpisodeWriter repairs it)")
            ids = _read_all(path, arr).astype(np.int32)                     # (K,)
            bad = np.nonzero((ids < -1) | (ids >= len(vocab)))[0]
            if len(bad):
                step = int(bad[0])
                ep = int(np.searchsorted(episode_ends, step, side="right"))
                raise DatasetError(f"{path}: key '{key}' holds {int(ids[step])} at step {step} (episode {ep}); "
                                   f"expected -1 or an index below len({VOCAB_ATTR}) = {len(vocab)}")
        return cls(language, ids, list(vocab))

    def episode_language(self, episode: int) -> Optional[str]:
        """The instruction of ``episode`` (None if the store has none)."""
        return None if self.language is None else self.language[episode]

    def step_reasoning(self, step: int) -> Optional[str]:
        """The reasoning string in force at global ``step`` (None if none)."""
        if self.reasoning_ids is None:
            return None
        i = int(self.reasoning_ids[step])
        return None if i < 0 else self.vocab[i]


def detect_zarr(path: str) -> bool:
    """A directory with ``.zgroup`` (v2) or ``zarr.json`` (v3), or a ``.zip`` file."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, ".zgroup")) or os.path.isfile(os.path.join(path, "zarr.json"))
    return os.path.isfile(path) and path.lower().endswith(".zip")


def open_zarr_source(path: str, keys: Optional[Sequence[str]], low_dim_dims: Optional[Mapping[str, int]],
                     verify: bool, options: SourceOptions) -> Any:
    """Opener of the ``zarr`` format (``options`` are ignored: the store is in our layout)."""
    from controller.dataset.replay_buffer import ZarrReplayBuffer  # noqa: PLC0415

    return ZarrReplayBuffer.open(path, keys=None if keys is None else list(keys), low_dim_dims=low_dim_dims,
                                 verify_chunks=verify)


def describe_zarr(rb: Any) -> dict[str, Any]:
    """``describe()`` of a :class:`ZarrReplayBuffer`: format, path, episodes, keys with shapes..."""
    from controller.dataset.replay_buffer import open_zarr_group  # noqa: PLC0415

    text = rb.text()
    fps = None
    try:
        root = open_zarr_group(rb.path, mode="r")
        if META_GROUP in root:
            fps = root[META_GROUP].attrs.get(FPS_ATTR)
    except DatasetError:  # pragma: no cover - the store was readable a moment ago
        pass
    keys = {k: {"shape": tuple(info["shape"]), "dtype": str(info["dtype"]), "chunks": tuple(info["chunks"]),
                "compressor": info["compressor"]} for k, info in rb.array_info.items()}
    return {"format": "zarr", "path": rb.path, "zarr_format": rb.zarr_format, "files": [rb.path],
            "n_episodes": rb.n_episodes, "n_steps": rb.n_steps, "keys": keys, "fps": fps,
            "language": text.language is not None, "reasoning": text.reasoning_ids is not None,
            "reasoning_vocab_size": len(text.vocab)}


class ZarrSink:
    """The ``zarr`` sink: a fresh store written under a temporary name, renamed by :meth:`close`.

    Args:
        path: destination store directory.
        fps: stored as ``meta.attrs['fps']``.
        overwrite: replace an existing destination at :meth:`close`.
        zarr_format: 2 or 3; image_chunks: frames per image chunk (see ZarrEpisodeWriter).
    """

    def __init__(self, path: str | os.PathLike, fps: float = 20.0, overwrite: bool = False,
                 zarr_format: int = 2, image_chunks: int = 1):
        from controller.dataset.writer import ZarrEpisodeWriter  # noqa: PLC0415

        self.path = os.fspath(path)
        dest = Path(self.path)
        self.overwrite = bool(overwrite)
        self.tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_path(self.tmp)
        self.writer = ZarrEpisodeWriter(self.tmp, zarr_format=zarr_format, image_chunks=image_chunks)
        self.writer.meta.attrs[FPS_ATTR] = float(fps)
        self.closed = False

    def add_episode(self, data: Mapping[str, np.ndarray], language: Optional[str] = None,
                    reasoning: Optional[Sequence[Optional[str]]] = None) -> None:
        """Append one episode (our keys, each (T, ...)) with its optional text."""
        self.writer.add_episode(data, language=language, reasoning=reasoning)

    def close(self) -> None:
        """Publish the store at ``path`` (DatasetError and nothing published if it has no episode)."""
        if self.closed:
            return
        if self.writer.n_episodes == 0:
            self.abort()
            raise DatasetError(f"{self.path}: no episodes were written; nothing to publish")
        self.writer.close()
        try:
            publish(self.tmp, self.path, self.overwrite)
        except DatasetError:
            self.abort()
            raise
        self.closed = True

    def abort(self) -> None:
        """Remove the temporary store; the destination is left untouched."""
        remove_path(self.tmp)
        self.closed = True

    def __enter__(self) -> "ZarrSink":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


register_format("zarr", detect_zarr, open_zarr_source)
register_sink("zarr", ZarrSink)
