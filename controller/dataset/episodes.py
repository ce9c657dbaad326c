"""Episode indexing shared by every dataset reader (zarr, ACT HDF5, LeRobot, deployment recordings).

A reader keeps its per-step arrays in ``self._data`` (our key -> array or lazy array over all
steps, episodes concatenated) and the exclusive end step of each episode in ``self._episode_ends``
(int64); this mixin derives the rest of the read interface from those two.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np


class EpisodeArrays:
    """Read accessors of a source whose steps are concatenated episodes (see module docstring)."""

    path: str
    _data: dict
    _episode_ends: np.ndarray

    @property
    def episode_ends(self) -> np.ndarray:
        """(J,) int64 exclusive end step of each episode."""
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
        return list(self._data)

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
        """All steps of episode ``idx`` as numpy arrays (lazy images are read and decoded)."""
        idx = range(self.n_episodes)[idx]
        start, end = int(self.episode_starts[idx]), int(self._episode_ends[idx])
        return {k: np.asarray(self._data[k][start:end]) for k in (keys or self.keys())}
