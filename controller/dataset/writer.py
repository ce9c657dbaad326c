"""Append-only episode writer for the reference zarr layout (v2 or v3).

Crash safety: an episode is validated in full before anything is written; the per-step arrays are
then grown and filled, and ``meta/episode_ends`` is extended *last*. If the process dies
mid-episode the store holds trailing steps beyond ``episode_ends[-1]`` (or, in the tiny window of
the final metadata write, a trailing ``episode_ends`` entry still at its fill value 0). Opening the
store again with :class:`ZarrEpisodeWriter` repairs both by truncating back to the last complete
episode, so nothing half-written is ever read as data.

Text (optional, see :mod:`controller.dataset.formats.zarr_source`): ``add_episode(..., language=,
reasoning=)`` stores the instruction in ``meta.attrs['language']`` (one string per episode, ''
for none) and the per-step reasoning as ``data/reasoning_id`` (int32, -1 = none) indexing
``meta.attrs['reasoning_vocab']``. The ids are written with the episode's arrays and the attrs
before ``episode_ends``, so the metadata-last rule holds; repair trims text of dropped episodes.

Example::

    with ZarrEpisodeWriter("data/sim.zarr", zarr_format=2) as w:
        w.add_episode({"right_cam_img": cam, "rgbm": rgbm, "right_state": s, "action": a})
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numcodecs
import numpy as np
import zarr

from controller.dataset.errors import DATA_GROUP, EPISODE_ENDS_KEY, IMAGE_CHANNELS, META_GROUP, DatasetError

#: Names of the text storage (also in controller.dataset.formats.zarr_source).
REASONING_ID_KEY = "reasoning_id"
LANGUAGE_ATTR = "language"
VOCAB_ATTR = "reasoning_vocab"

log = logging.getLogger(__name__)

LOW_DIM_CHUNK = 1024  # steps per chunk of low-dim arrays
ENDS_CHUNK = 1024     # episodes per chunk of meta/episode_ends


def _compressor(zarr_format: int, image: bool) -> Any:
    """Blosc for both formats (numcodecs object for v2, as zarr 2.x wrote; v3 codec otherwise)."""
    cname, clevel = ("lz4", 5) if image else ("zstd", 3)
    if zarr_format == 2:
        shuffle = numcodecs.Blosc.NOSHUFFLE if image else numcodecs.Blosc.SHUFFLE
        return numcodecs.Blosc(cname=cname, clevel=clevel, shuffle=shuffle)
    from zarr.codecs import BloscCodec
    return BloscCodec(cname=cname, clevel=clevel, shuffle="noshuffle" if image else "shuffle")


class ZarrEpisodeWriter:
    """Create or append to a zarr dataset one episode at a time.

    Args:
        path: store directory; created if missing, otherwise opened for appending (and repaired).
        zarr_format: 2 (like the reference data, written by zarr 2.x) or 3; only used when
            creating -- an existing store keeps its own format.
        image_chunks: frames per chunk of image arrays (1 = one frame per chunk, best for random
            access during training).
    """

    def __init__(self, path: str | os.PathLike, zarr_format: int = 2, image_chunks: int = 1):
        if zarr_format not in (2, 3):
            raise ValueError(f"{path}: zarr_format must be 2 or 3, got {zarr_format}")
        if int(image_chunks) < 1:
            raise ValueError(f"{path}: image_chunks must be >= 1, got {image_chunks}")
        self.path = str(path)
        self.image_chunks = int(image_chunks)
        if Path(self.path).exists():
            try:
                self.root = zarr.open_group(self.path, mode="r+")
            except Exception as exc:
                raise DatasetError(f"{self.path}: exists but is not a writable zarr group ({exc})") from exc
            self.zarr_format = int(self.root.metadata.zarr_format)
        else:
            self.root = zarr.open_group(self.path, mode="w", zarr_format=zarr_format)
            self.zarr_format = zarr_format
        self.data = self.root.require_group(DATA_GROUP)
        meta = self.meta = self.root.require_group(META_GROUP)
        if "episode_ends" in meta:
            self.episode_ends = meta["episode_ends"]
        else:
            kw = {"compressor": None} if self.zarr_format == 2 else {"compressors": None}
            self.episode_ends = meta.create_array("episode_ends", shape=(0,), chunks=(ENDS_CHUNK,),
                                                  dtype="int64", fill_value=0, **kw)
        self.repaired = self.repair()

    # ------------------------------------------------------------------ state
    @property
    def n_episodes(self) -> int:
        return int(self.episode_ends.shape[0])

    @property
    def n_steps(self) -> int:
        n = self.n_episodes
        return int(self.episode_ends[n - 1]) if n else 0

    def repair(self) -> bool:
        """Drop a half-written tail: invalid trailing ``episode_ends`` and steps past the last end.

        Returns True if anything was truncated.
        """
        ends = np.asarray(self.episode_ends[...], dtype=np.int64)
        lengths = {k: int(a.shape[0]) for k, a in self.data.arrays() if k != REASONING_ID_KEY}
        # keep the longest strictly increasing prefix whose steps exist in every array
        limit = min(lengths.values()) if lengths else 0
        keep = 0
        prev = 0
        for e in ends:
            if e <= prev or e > limit:
                break
            keep, prev = keep + 1, int(e)
        changed = False
        if keep < len(ends):
            log.warning("%s: dropping %d incomplete trailing entries of %s", self.path,
                        len(ends) - keep, EPISODE_ENDS_KEY)
            self.episode_ends.resize((keep,))
            changed = True
        changed = self._repair_text(keep, prev) or changed
        for key, arr in self.data.arrays():
            if arr.shape[0] > prev:
                log.warning("%s: truncating '%s/%s' from %d to %d steps (interrupted episode)",
                            self.path, DATA_GROUP, key, arr.shape[0], prev)
                arr.resize((prev,) + tuple(arr.shape[1:]))
                changed = True
        return changed

    def _repair_text(self, n_episodes: int, n_steps: int) -> bool:
        """Trim ``language`` to ``n_episodes``; pad a short ``reasoning_id`` (interrupted back-fill) with -1."""
        changed = False
        language = self.meta.attrs.get(LANGUAGE_ATTR)
        if isinstance(language, list) and len(language) > n_episodes:
            self.meta.attrs[LANGUAGE_ATTR] = language[:n_episodes]
            changed = True
        if REASONING_ID_KEY in self.data:
            arr = self.data[REASONING_ID_KEY].with_config({"write_empty_chunks": True})
            n = int(arr.shape[0])
            if n < n_steps:
                arr.resize((n_steps,))
                arr[n:n_steps] = -1
                changed = True
        return changed

    # ------------------------------------------------------------------ writing
    def _validate(self, episode: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Convert and check a whole episode before anything is written."""
        if not episode:
            raise DatasetError(f"{self.path}: add_episode got an empty dict")
        eps = {str(k): np.asarray(v) for k, v in episode.items()}
        lengths = {k: (v.shape[0] if v.ndim else -1) for k, v in eps.items()}
        n = next(iter(lengths.values()))
        if n < 1 or any(m != n for m in lengths.values()):
            raise DatasetError(f"{self.path}: add_episode arrays must share a length >= 1, got {lengths}")
        existing = {k: a for k, a in self.data.arrays() if k != REASONING_ID_KEY}
        if REASONING_ID_KEY in eps:
            raise DatasetError(f"{self.path}: '{REASONING_ID_KEY}' is written from add_episode(reasoning=...), "
                               f"not passed as a data key")
        if existing and set(existing) != set(eps):
            raise DatasetError(f"{self.path}: add_episode keys {sorted(eps)} differ from the store's "
                               f"'{DATA_GROUP}/' keys {sorted(existing)}")
        for k, v in eps.items():
            if k in IMAGE_CHANNELS:
                c = IMAGE_CHANNELS[k]
                if v.ndim != 4 or v.shape[3] != c:
                    raise DatasetError(f"{self.path}: key '{DATA_GROUP}/{k}' episode has shape "
                                       f"{v.shape}; expected (T, H, W, {c})")
                if v.dtype != np.uint8:
                    raise DatasetError(f"{self.path}: key '{DATA_GROUP}/{k}' has dtype {v.dtype}; expected uint8")
            elif v.dtype.kind == "f" and not np.isfinite(v).all():
                raise DatasetError(f"{self.path}: key '{DATA_GROUP}/{k}' episode contains NaN/inf")
            if k in existing:
                arr = existing[k]
                if tuple(arr.shape[1:]) != v.shape[1:]:
                    raise DatasetError(f"{self.path}: key '{DATA_GROUP}/{k}' episode has per-step "
                                       f"shape {v.shape[1:]}; expected {tuple(arr.shape[1:])}")
                if not np.can_cast(v.dtype, arr.dtype, casting="same_kind"):
                    raise DatasetError(f"{self.path}: key '{DATA_GROUP}/{k}' has dtype {v.dtype}; "
                                       f"expected {arr.dtype}")
                eps[k] = v.astype(arr.dtype, copy=False)
        return eps

    def _create_arrays(self, eps: Mapping[str, np.ndarray]) -> None:
        for k, v in eps.items():
            if k in self.data:
                continue
            image = k in IMAGE_CHANNELS or v.ndim > 2
            chunks = ((self.image_chunks if image else LOW_DIM_CHUNK),) + v.shape[1:]
            comp = _compressor(self.zarr_format, image)
            kw = {"compressor": comp} if self.zarr_format == 2 else {"compressors": comp}
            self.data.create_array(k, shape=(0,) + v.shape[1:], chunks=chunks, dtype=v.dtype,
                                   fill_value=0, **kw)

    def _append_data(self, eps: Mapping[str, np.ndarray], start: int) -> None:
        """Grow every data array and write the episode's steps at ``[start, start + T)``.

        Chunks equal to the fill value (e.g. an all-black frame with an empty mask) are written
        too, so every chunk of a complete store exists on disk and a missing chunk file always
        means damage (see ``python -m controller.dataset.inspect --verify``).
        """
        for k, v in eps.items():
            arr = self.data[k].with_config({"write_empty_chunks": True})
            arr.resize((start + v.shape[0],) + v.shape[1:])
            arr[start:start + v.shape[0]] = v

    def _commit_episode_end(self, end: int) -> None:
        """Publish the episode: extend ``meta/episode_ends`` (the last write of an append)."""
        j = self.n_episodes
        self.episode_ends.resize((j + 1,))
        self.episode_ends[j] = end

    def _text_updates(self, n: int, language: Optional[str],
                      reasoning: Optional[Sequence[Optional[str]]]) -> tuple[Optional[np.ndarray], dict]:
        """Validate the text of an episode of ``n`` steps: ((n,) int32 reasoning ids or None, new attrs)."""
        attrs: dict[str, Any] = {}
        if language is not None and not isinstance(language, str):
            raise DatasetError(f"{self.path}: add_episode language must be a str or None, got {type(language).__name__}")
        old_lang = self.meta.attrs.get(LANGUAGE_ATTR)
        if language is not None or old_lang is not None:
            prev = list(old_lang or [""] * self.n_episodes)[:self.n_episodes]
            attrs[LANGUAGE_ATTR] = prev + [language or ""]
        if reasoning is None:
            if REASONING_ID_KEY not in self.data:
                return None, attrs
            return np.full((n,), -1, dtype=np.int32), attrs                  # (n,) no reasoning
        if isinstance(reasoning, str) or len(reasoning) != n:
            got = "a str" if isinstance(reasoning, str) else f"{len(reasoning)} entries"
            raise DatasetError(f"{self.path}: add_episode reasoning has {got}; expected a list of {n} strings "
                               f"(one per step, None or '' for none)")
        vocab = list(self.meta.attrs.get(VOCAB_ATTR) or [])
        index = {s: i for i, s in enumerate(vocab)}
        ids = np.full((n,), -1, dtype=np.int32)                               # (n,)
        for t, text in enumerate(reasoning):
            if text is None or text == "":
                continue
            if not isinstance(text, str):
                raise DatasetError(f"{self.path}: add_episode reasoning[{t}] is {type(text).__name__}; expected str")
            if text not in index:
                index[text] = len(vocab)
                vocab.append(text)
            ids[t] = index[text]
        if len(vocab) != len(self.meta.attrs.get(VOCAB_ATTR) or []):
            attrs[VOCAB_ATTR] = vocab
        return ids, attrs

    def _append_reasoning(self, ids: np.ndarray, start: int) -> None:
        """Write the episode's reasoning ids at ``[start, start + n)`` (creating the array, back-filled with -1)."""
        if REASONING_ID_KEY not in self.data:
            comp = _compressor(self.zarr_format, image=False)
            kw = {"compressor": comp} if self.zarr_format == 2 else {"compressors": comp}
            self.data.create_array(REASONING_ID_KEY, shape=(0,), chunks=(LOW_DIM_CHUNK,), dtype="int32",
                                   fill_value=-1, **kw)
        arr = self.data[REASONING_ID_KEY].with_config({"write_empty_chunks": True})
        old = int(arr.shape[0])
        arr.resize((start + len(ids),))
        if old < start:
            arr[old:start] = -1                                               # earlier episodes: none
        arr[start:start + len(ids)] = ids

    def add_episode(self, episode: Mapping[str, Any], language: Optional[str] = None,
                    reasoning: Optional[Sequence[Optional[str]]] = None) -> int:
        """Append one episode (dict key -> (T, ...) array, all with the same T >= 1).

        Args:
            language: the episode's instruction (None: none; stored as '').
            reasoning: T strings, the sub-step reasoning in force at each step (None/'' = none).

        Returns the new number of episodes. On an exception the store is rolled back to its
        previous episodes (as far as the process is still alive to do so).
        """
        eps = self._validate(episode)
        start = self.n_steps
        n = int(next(iter(eps.values())).shape[0])
        ids, attrs = self._text_updates(n, language, reasoning)
        try:
            self._create_arrays(eps)
            self._append_data(eps, start)
            if ids is not None:
                self._append_reasoning(ids, start)
            if attrs:
                self.meta.attrs.update(attrs)
            self._commit_episode_end(start + n)
        except BaseException:
            try:
                self.repair()
            except Exception:  # pragma: no cover - best effort; reopening repairs as well
                log.exception("%s: rollback after a failed append failed", self.path)
            raise
        return self.n_episodes

    def close(self) -> None:
        """Nothing is buffered; provided for symmetry and ``with`` use."""

    def __enter__(self) -> "ZarrEpisodeWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ZarrEpisodeWriter({self.path!r}, zarr v{self.zarr_format}, "
                f"{self.n_episodes} episodes, {self.n_steps} steps)")


def write_episodes(path: str | os.PathLike, episodes: list[Mapping[str, Any]], zarr_format: int = 2,
                   image_chunks: int = 1, overwrite: bool = False) -> str:
    """Write ``episodes`` to ``path``: appended if the store exists, unless ``overwrite`` replaces it."""
    p = Path(path)
    if p.exists() and overwrite:
        import shutil
        shutil.rmtree(p)
    with ZarrEpisodeWriter(p, zarr_format=zarr_format, image_chunks=image_chunks) as w:
        for ep in episodes:
            w.add_episode(ep)
    return str(p)
