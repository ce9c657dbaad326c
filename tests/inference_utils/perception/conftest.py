"""Synthetic table-top grasp sequences for the perception tests (no simulator needed).

Factory fixtures (cached per session, sequences are read-only):

* ``grasp_sequence(seed=0, **kw)`` -> :class:`SyntheticSequence`: textured table, several
  coloured objects, a grey hand that approaches, occludes, grasps and lifts the target, with
  sensor noise and a lighting change (see ``inference_utils.perception.synthetic``).
* ``loose_box(box, seed)`` -> a planner-like loose box around a tight box.
"""
from __future__ import annotations

import numpy as np
import pytest

from inference_utils.perception.synthetic import make_grasp_sequence

_CACHE: dict = {}


@pytest.fixture(scope="session")
def grasp_sequence():
    """Factory: ``grasp_sequence(seed=0, **kwargs)`` -> cached synthetic grasp episode."""

    def make(seed: int = 0, **kwargs):
        key = (seed, tuple(sorted(kwargs.items())))
        if key not in _CACHE:
            _CACHE[key] = make_grasp_sequence(seed=seed, **kwargs)
        return _CACHE[key]

    return make


@pytest.fixture(scope="session")
def loose_box():
    """Factory: ``loose_box(box, seed, lo=0.05, hi=0.2)`` grows each side by lo..hi of the size."""

    def make(box, seed: int = 0, lo: float = 0.05, hi: float = 0.2):
        rng = np.random.default_rng(seed)
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        f = rng.uniform(lo, hi, 4)
        return (x1 - f[0] * w, y1 - f[1] * h, x2 + f[2] * w, y2 + f[3] * h)

    return make
