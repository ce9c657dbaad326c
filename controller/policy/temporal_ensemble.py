"""Temporal ensembling of overlapping action chunks (as in ACT, Zhao et al. 2023).

The controller predicts a 64-step chunk but only the first few actions are executed before it
predicts again, so every future step is covered by several chunks predicted from successive
observations. :class:`TemporalEnsemble` keeps the recent chunks and returns, for each step of
the newest chunk, the weighted mean of every stored prediction for that same time step, with
weight ``exp(-decay * age)`` (``age`` = steps since that chunk was predicted). This damps the
chunk-to-chunk jitter of independent diffusion samples (each chunk starts from fresh noise)
without delaying the reaction to a new observation much: the newest chunk always carries the
largest weight.

``decay = 0`` is a plain mean over the overlapping chunks; a large ``decay`` approaches the
newest chunk alone (no ensembling). The ensemble knows nothing of devices or the planner; the
caller reports how many actions were executed (:meth:`advance`) and starts a new grasp attempt
with :meth:`reset`.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Deque, Tuple

import numpy as np

def parse_decay(text: str) -> float | None:
    """Command-line value: ``off`` (or ``none``) -> ``None``, else a decay >= 0."""
    if str(text).strip().lower() in ("off", "none", "null"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"temporal ensemble: expected 'off' or a decay >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"temporal ensemble: expected 'off' or a decay >= 0, got {text!r}")
    return value


class TemporalEnsemble:
    """Blend each new action chunk with the still-overlapping earlier ones.

    Args:
        decay: weight decay per step of age (>= 0); a chunk predicted ``a`` steps ago weighs
            ``exp(-decay * a)`` relative to the newest.
        horizon: chunk length (steps); chunks older than this no longer overlap and are dropped.
    """

    def __init__(self, decay: float, horizon: int = 64) -> None:
        if not math.isfinite(decay) or decay < 0:
            raise ValueError(f"temporal ensemble decay must be a finite number >= 0, got {decay!r}")
        if int(horizon) < 1:
            raise ValueError(f"temporal ensemble horizon must be >= 1, got {horizon!r}")
        self.decay = float(decay)
        self.horizon = int(horizon)
        self._chunks: Deque[Tuple[int, np.ndarray]] = deque()  # (start step, (horizon, D))
        self._now = 0

    def reset(self) -> None:
        """Forget every stored chunk (a new grasp attempt / episode)."""
        self._chunks.clear()
        self._now = 0

    def advance(self, n: int) -> None:
        """``n`` actions of the last returned chunk were executed."""
        if int(n) < 0:
            raise ValueError(f"advance expects n >= 0, got {n!r}")
        self._now += int(n)
        while self._chunks and self._now - self._chunks[0][0] >= self.horizon:
            self._chunks.popleft()

    def __len__(self) -> int:
        return len(self._chunks)

    def add(self, chunk: np.ndarray) -> np.ndarray:
        """Store ``chunk`` (T, D), predicted at the current step, and return the blended chunk
        (T, D): row ``j`` is the weighted mean of every stored prediction for step ``now + j``."""
        chunk = np.asarray(chunk)
        if chunk.ndim != 2:
            raise ValueError(f"temporal ensemble expects a (T, D) chunk, got shape {chunk.shape}")
        if self._chunks and self._chunks[-1][1].shape[1] != chunk.shape[1]:
            raise ValueError(f"chunk width {chunk.shape[1]} differs from the stored chunks' "
                             f"{self._chunks[-1][1].shape[1]}")
        if len(chunk) > self.horizon:
            raise ValueError(f"chunk has {len(chunk)} steps, more than the horizon {self.horizon}")
        if self._chunks and self._chunks[-1][0] == self._now:
            self._chunks.pop()  # re-predicted without executing anything: replace, do not double-count
        self._chunks.append((self._now, chunk.astype(np.float64)))
        total = np.zeros(chunk.shape, np.float64)   # (T, D) weighted sum
        weight = np.zeros((len(chunk), 1), np.float64)
        for start, old in self._chunks:
            age = self._now - start
            rows = min(len(old) - age, len(chunk))   # rows of `old` that reach steps now .. now+rows-1
            if rows <= 0:
                continue
            w = math.exp(-self.decay * age)
            total[:rows] += w * old[age:age + rows]
            weight[:rows] += w
        return (total / weight).astype(chunk.dtype)
