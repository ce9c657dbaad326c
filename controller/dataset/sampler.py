"""Window indexing inside episodes, episode-level train/val split and subsampling.

A training sample is a window of ``horizon`` consecutive steps starting at step ``s`` of one
episode: its observation is the first ``n_obs_steps`` steps and its action chunk all ``horizon``
steps. Windows start at every step of every selected episode (and, for ``n_obs_steps > 1``, up to
``n_obs_steps - 1`` steps before the episode start so the first step can be the latest
observation). Positions outside the episode repeat the nearest real step (the last action at the
end, the first at the start) and are flagged in ``is_pad``; a window never crosses an episode.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["get_val_mask", "downsample_mask", "compute_window_indices", "SequenceSampler"]


def get_val_mask(n_episodes: int, val_ratio: float, seed: int = 0) -> np.ndarray:
    """Seeded boolean mask (n_episodes,) of validation episodes.

    ``round(n * val_ratio)`` episodes, but at least 1 when ``val_ratio > 0`` and there are at
    least 2 episodes, and never all of them (one episode is always left for training).
    """
    n_episodes = int(n_episodes)
    mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio is None or val_ratio <= 0 or n_episodes < 2:
        return mask
    n_val = int(min(max(1, round(n_episodes * float(val_ratio))), n_episodes - 1))
    rng = np.random.default_rng(seed)
    mask[rng.choice(n_episodes, size=n_val, replace=False)] = True
    return mask


def downsample_mask(mask: np.ndarray, max_n: Optional[int], seed: int = 0) -> np.ndarray:
    """Keep at most ``max_n`` of the True entries of ``mask`` (seeded choice); ``None`` keeps all."""
    mask = np.asarray(mask, dtype=bool)
    if max_n is None or mask.sum() <= int(max_n):
        return mask.copy()
    if int(max_n) < 0:
        raise ValueError(f"max_n must be >= 0 or None, got {max_n}")
    chosen = np.flatnonzero(mask)
    rng = np.random.default_rng(seed)
    keep = chosen[rng.choice(len(chosen), size=int(max_n), replace=False)]
    out = np.zeros_like(mask)
    out[keep] = True
    return out


def compute_window_indices(episode_ends: np.ndarray, episode_mask: Optional[np.ndarray],
                           horizon: int, n_obs_steps: int = 1, pad_after: bool = True) -> np.ndarray:
    """Enumerate windows; returns int64 ``(N, 3)`` rows ``[window_start, episode_start, episode_end]``.

    ``window_start`` is the global step of the window's first position (it may precede
    ``episode_start`` by up to ``n_obs_steps - 1``). With ``pad_after`` the last window starts at the
    episode's last step; without it windows must fit in the episode (short episodes yield none).
    """
    if horizon < 1 or n_obs_steps < 1 or n_obs_steps > horizon:
        raise ValueError(f"need 1 <= n_obs_steps ({n_obs_steps}) <= horizon ({horizon})")
    ends = np.asarray(episode_ends, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    if episode_mask is None:
        episode_mask = np.ones(len(ends), dtype=bool)
    episode_mask = np.asarray(episode_mask, dtype=bool)
    if episode_mask.shape != ends.shape:
        raise ValueError(f"episode_mask shape {episode_mask.shape} != episode_ends shape {ends.shape}")
    rows = []
    for start, end in zip(starts[episode_mask], ends[episode_mask]):
        first = start - (n_obs_steps - 1)
        last = end - 1 if pad_after else end - horizon
        if last < first:
            continue
        s = np.arange(first, last + 1, dtype=np.int64)                  # (n,)
        rows.append(np.stack([s, np.full_like(s, start), np.full_like(s, end)], axis=1))
    if not rows:
        return np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(rows, axis=0)


class SequenceSampler:
    """Maps a window number to the global step indices of its observation and action steps.

    Args:
        episode_ends: (J,) exclusive episode ends.
        horizon: action steps per window (64 in the paper).
        n_obs_steps: observation steps per window (1 in the paper).
        episode_mask: (J,) bool, episodes to draw windows from (default all).
        pad_after: allow windows running past the episode end (padded with the last action).
    """

    def __init__(self, episode_ends: np.ndarray, horizon: int, n_obs_steps: int = 1,
                 episode_mask: Optional[np.ndarray] = None, pad_after: bool = True):
        self.horizon = int(horizon)
        self.n_obs_steps = int(n_obs_steps)
        self.indices = compute_window_indices(episode_ends, episode_mask, self.horizon,
                                              self.n_obs_steps, pad_after)
        self._offsets = np.arange(self.horizon, dtype=np.int64)  # (H,)

    def __len__(self) -> int:
        return int(len(self.indices))

    def window(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indices for window ``i``.

        Returns:
            obs_idx: (n_obs_steps,) global steps of the observations (clamped into the episode).
            act_idx: (horizon,) global steps of the actions (clamped into the episode).
            is_pad: (horizon,) bool, True where the position lies outside the episode.
        """
        s, start, end = (int(v) for v in self.indices[i])
        pos = s + self._offsets                             # (H,)
        is_pad = (pos < start) | (pos >= end)               # (H,)
        idx = np.clip(pos, start, end - 1)                  # (H,)
        return idx[: self.n_obs_steps].copy(), idx, is_pad
