"""Synthetic zarr stores in the reference layout, for tests (also used by the controller tests).

``make_grasp_zarr`` writes episodes whose values are realistic in range and easy to decode:

* ``action[t, d] = (episode * 100 + step_in_episode) / 1000 + d / 10000`` (arm dims in [-1, 1],
  hand dims in [0, 1] for up to 9 episodes of < 100 steps), except dim 12 which is constant
  (0.5); :func:`decode_action` recovers ``(episode, step)`` from a row;
* ``right_state`` is the previous step's action (the first step repeats the first action);
* ``right_cam_img`` is random BGR noise with pixel (0, 0) encoding (episode, step) in B and G;
* ``rgbm`` is random BGR with a rectangular target mask (values 0/``mask_value``).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from controller.dataset.writer import ZarrEpisodeWriter

#: Default episode lengths of :func:`make_grasp_zarr` (one shorter than the 64-step horizon, one longer).
DEFAULT_LENGTHS = (5, 40, 80, 12)


def make_episode(ep: int, length: int, hw=(48, 64), rng=None, mask_value: int = 1,
                 dim: int = 13) -> dict:
    """One synthetic episode dict (T = length) in the store layout."""
    rng = rng if rng is not None else np.random.default_rng(ep)
    h, w = hw
    t = np.arange(length, dtype=np.float64)[:, None]                        # (T, 1)
    d = np.arange(dim, dtype=np.float64)[None, :]                           # (1, D)
    action = ((ep * 100 + t) / 1000 + d / 10000).astype(np.float32)         # (T, D)
    action[:, -1] = 0.5                                                     # a constant dim
    state = np.concatenate([action[:1], action[:-1]], axis=0)               # (T, D) previous target
    cam = rng.integers(0, 256, size=(length, h, w, 3), dtype=np.uint8)      # (T, H, W, 3)
    cam[:, 0, 0, 0] = ep % 256
    cam[:, 0, 0, 1] = np.arange(length) % 256
    rgbm = rng.integers(0, 256, size=(length, h, w, 4), dtype=np.uint8)     # (T, H, W, 4)
    rgbm[..., 3] = 0
    rgbm[:, h // 4: h // 2, w // 4: w // 2, 3] = mask_value
    return {"right_cam_img": cam, "rgbm": rgbm, "right_state": state, "action": action}


def decode_action(row) -> tuple[int, int]:
    """(episode, step) encoded in an action row written by :func:`make_episode`."""
    code = int(round(float(row[0]) * 1000))
    return code // 100, code % 100


def make_grasp_zarr(path: str | os.PathLike, episode_lengths: Sequence[int] = DEFAULT_LENGTHS,
                    hw=(48, 64), zarr_format: int = 2, seed: int = 0, mask_value: int = 1,
                    first_episode: int = 0) -> str:
    """Write a fresh store at ``path`` (replacing any) and return its path as a string.

    ``zarr_format=2`` writes a Blosc-compressed zarr v2 store like the reference data (zarr 2.x);
    ``first_episode`` offsets the episode numbers encoded in the values (for multi-store tests).
    """
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    rng = np.random.default_rng(seed)
    with ZarrEpisodeWriter(path, zarr_format=zarr_format) as w:
        for i, n in enumerate(episode_lengths):
            w.add_episode(make_episode(first_episode + i, int(n), hw, rng, mask_value))
    return str(path)
