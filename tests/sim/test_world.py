"""Scene generation, splits, rendering and argument checking of the simulated world."""
from __future__ import annotations

import numpy as np
import pytest

from controller.common.shape_meta import check_raw_obs, make_shape_meta
from sim.config import SPLITS, SimConfig, SimConfigError
from sim.randomization import (TRAIN_BACKGROUNDS, TRAIN_LIGHTING, TRAIN_PALETTE, TRAIN_SHAPES,
                               UNSEEN_BACKGROUNDS, UNSEEN_LIGHTING, UNSEEN_PALETTE, UNSEEN_SHAPES,
                               factor_sets)
from sim.scene import sample_scene


def test_scene_is_deterministic_from_seed(config_factory):
    cfg = config_factory(n_objects=(4, 10))
    a, b = sample_scene(7, "train", cfg), sample_scene(7, "train", cfg)
    assert a == b
    c = sample_scene(8, "train", cfg)
    assert a != c


def test_objects_do_not_overlap_and_count_in_range(config_factory):
    cfg = config_factory(n_objects=(4, 10))
    for seed in range(20):
        sc = sample_scene(seed, "train", cfg)
        assert 4 <= len(sc.objects) <= 10
        for i, o in enumerate(sc.objects):
            for p in sc.objects[i + 1:]:
                d = np.hypot(o.pos[0] - p.pos[0], o.pos[1] - p.pos[1])
                assert d >= o.footprint + p.footprint


def test_splits_are_disjoint(config_factory):
    assert not set(TRAIN_SHAPES) & set(UNSEEN_SHAPES)
    assert not set(TRAIN_PALETTE) & set(UNSEEN_PALETTE)
    assert not set(map(tuple, TRAIN_PALETTE.values())) & set(map(tuple, UNSEEN_PALETTE.values()))
    assert not {b.name for b in TRAIN_BACKGROUNDS} & {b.name for b in UNSEEN_BACKGROUNDS}
    assert not set(TRAIN_LIGHTING.tints) & set(UNSEEN_LIGHTING.tints)
    assert TRAIN_LIGHTING.count[1] < UNSEEN_LIGHTING.count[0]
    for split in SPLITS:
        fs = factor_sets(split)
        changed = [fs.shapes != TRAIN_SHAPES, fs.backgrounds != TRAIN_BACKGROUNDS, fs.lighting != TRAIN_LIGHTING]
        assert sum(changed) == (0 if split == "train" else 1)
    cfg = config_factory()
    sc = sample_scene(3, "unseen_objects", cfg)
    assert all(o.shape in UNSEEN_SHAPES and o.colour_name in UNSEEN_PALETTE for o in sc.objects)


def test_same_seed_same_rendering_and_target_mask(env_factory):
    with env_factory() as env:
        obs1, info1 = env.reset(seed=11, split="train")
        check_raw_obs(obs1, make_shape_meta())
        assert obs1["right_cam_img"].shape == (480, 640, 3) and obs1["rgbm"].shape == (480, 640, 4)
        assert obs1["right_state"].dtype == np.float32
        mask = obs1["rgbm"][:, :, 3]
        assert set(np.unique(mask)) <= {0, 255}
        assert (mask == 255).sum() > 50, "target mask must be visible in the head camera"
        assert info1["objects"][info1["target_id"]]["bbox_head"] is not None
        cams = env.render_cameras()
        assert set(cams) >= {"head_bgr", "wrist_bgr", "head_seg"}
        assert np.array_equal((cams["head_seg"] == info1["target_id"]), mask == 255)
        assert cams["head_seg"].min() == -1 and cams["head_seg"].max() >= 0
        obs2, info2 = env.reset(seed=11, split="train")
        assert np.array_equal(obs1["rgbm"], obs2["rgbm"])
        assert np.array_equal(obs1["right_cam_img"], obs2["right_cam_img"])
        assert info1["objects"] == info2["objects"]


def test_step_keeps_state_and_env_api(env_factory):
    with env_factory(render_observations=False) as env:
        obs, info = env.reset(seed=2)
        state = obs["right_state"]
        for _ in range(5):
            obs, r, term, trunc, info = env.step(state)
        assert np.allclose(obs["right_state"], state, atol=1e-3)
        assert not info["success"] and not term and not trunc
        assert env.action_space.contains(state) and env.observation_space["right_state"].contains(obs["right_state"])
        assert env.arm_qpos().shape == (7,) and env.hand_state().shape == (6,)
        assert 0.1 < env.hand_height() < 0.6
        assert not env.object_lifted(0)
        env.set_target(env.n_objects - 1)
        assert env.step(state)[4]["target_id"] == env.n_objects - 1
        with pytest.raises(IndexError):
            env.set_target(99)


def test_bad_arguments_give_clear_errors(env_factory):
    with pytest.raises(SimConfigError, match="unseen_objects"):
        SimConfig(split="moon")
    with pytest.raises(SimConfigError, match="n_objects"):
        SimConfig(n_objects=(0, 3))
    with pytest.raises(SimConfigError, match="clutter"):
        SimConfig(clutter="extreme")
    with env_factory(render_observations=False) as env:
        with pytest.raises(SimConfigError, match="valid splits"):
            env.reset(seed=0, split="nope")
        env.reset(seed=0)
        with pytest.raises(SimConfigError, match="shape"):
            env.step(np.zeros(12))
