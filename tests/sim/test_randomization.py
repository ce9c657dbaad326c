"""Procedural training tables (``SimConfig(table_appearance="procedural")``): varied, deterministic,
clear of every held-out table colour, and changing nothing else in the scene."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sim.config import SimConfigError
from sim.randomization import (HELD_OUT_MARGIN, TRAIN_BACKGROUNDS, UNSEEN_BACKGROUNDS,
                               held_out_table_colours, procedural_background)
from sim.scene import sample_scene


def test_procedural_tables_are_varied_and_clear_of_held_out_colours():
    held = held_out_table_colours()
    assert held.shape == (2 * len(UNSEEN_BACKGROUNDS), 3)
    tables = [procedural_background(np.random.default_rng(s)) for s in range(400)]
    colours = np.asarray([[t.rgb1, t.rgb2] for t in tables])             # (400, 2, 3)
    assert colours.min() >= 0.0 and colours.max() <= 1.0
    dist = np.linalg.norm(colours[:, :, None] - held[None, None], axis=-1)
    assert dist.min() >= HELD_OUT_MARGIN
    assert {t.texture for t in tables} == {"flat", "checker", "gradient"}
    assert {t.floor for t in tables} <= {b.floor for b in TRAIN_BACKGROUNDS}
    # wide spread of brightness and of texture contrast, not a handful of looks
    assert np.ptp(colours[:, 0].mean(-1)) > 0.5
    contrast = np.abs(colours[:, 0] - colours[:, 1]).max(-1)
    assert contrast.max() > 0.4 and np.median(contrast) < 0.3
    assert len({t.rgb1 for t in tables}) == len(tables)


def test_procedural_table_changes_only_the_table(config_factory):
    presets, procedural = config_factory(), config_factory(table_appearance="procedural")
    for seed in range(5):
        a, b = sample_scene(seed, "train", presets), sample_scene(seed, "train", procedural)
        assert a.background in TRAIN_BACKGROUNDS and b.background.name == "procedural"
        assert dataclasses.replace(b, background=a.background) == a
        assert sample_scene(seed, "train", procedural) == b                # deterministic
        # the held-out split keeps its presets
        assert sample_scene(seed, "unseen_backgrounds", procedural) == sample_scene(seed, "unseen_backgrounds", presets)


def test_procedural_table_renders(env_factory):
    """Same seed with presets and with a procedural table: the same target mask (same geometry),
    a different table in the image."""
    frames = {}
    for mode in ("presets", "procedural"):
        with env_factory(table_appearance=mode) as env:
            obs, _ = env.reset(seed=3, split="train")
            frames[mode] = obs["rgbm"]
    a, b = frames["presets"], frames["procedural"]
    assert np.array_equal(a[..., 3], b[..., 3]) and a[..., 3].any()
    table = (a[..., 3] == 0)
    table[:240] = False                                                   # lower image: table
    diff = np.abs(a[..., :3].astype(int) - b[..., :3].astype(int)).mean(-1)
    assert diff[table].mean() > 10.0                                      # identical renders: 0


def test_unknown_table_appearance(config_factory):
    with pytest.raises(SimConfigError, match="table_appearance"):
        config_factory(table_appearance="random")
