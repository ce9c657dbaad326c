"""The ``dense`` split (issue 24 point 5): >= 12 objects, look-alike distractors of the target,
scenes that settle without interpenetration, and disjoint from the training scenes."""
from __future__ import annotations

import mujoco
import numpy as np
import pytest

from sim.config import ALL_SPLITS, SPLITS, SimConfig, SimConfigError, check_split
from sim.randomization import TRAIN_PALETTE, TRAIN_SHAPES, near_colour
from sim.scene import DENSE_N_OBJECTS, sample_scene

SEEDS = range(40)


def test_dense_is_selectable_but_not_in_the_four_standard_splits():
    assert check_split("dense") == "dense" and "dense" in ALL_SPLITS and "dense" not in SPLITS
    assert SimConfig(split="dense").split == "dense"
    with pytest.raises(SimConfigError, match="dense"):
        check_split("denser")


def test_dense_scenes_have_12_objects_and_lookalikes_of_the_target():
    cfg = SimConfig()  # n_objects (4, 10) is ignored by the dense split
    for seed in SEEDS:
        scene = sample_scene(seed, "dense", cfg)
        objs, t = scene.objects, scene.objects[scene.target]
        assert len(objs) >= 12 == DENSE_N_OBJECTS
        a, b = (objs[i] for i in scene.lookalikes)
        assert a.colour_name == t.colour_name and a.shape != t.shape          # same colour, other shape
        assert b.shape == t.shape and b.colour_name == near_colour(t.colour_name, TRAIN_PALETTE)
        # the prompt "grasp the <colour> <shape>" names exactly one object
        assert sum(o.describe() == t.describe() for o in objs) == 1
        assert all(o.shape in TRAIN_SHAPES and o.colour_name in TRAIN_PALETTE for o in objs)
        for i, o in enumerate(objs):  # no footprint overlap at spawn
            for p in objs[i + 1:]:
                assert np.hypot(o.pos[0] - p.pos[0], o.pos[1] - p.pos[1]) >= o.footprint + p.footprint - 1e-9


def test_dense_scenes_are_disjoint_from_training_scenes():
    """Its own seed stream and 12 objects: no dense scene equals any training scene of seeds
    0..199 (training collections use n_objects (4, 10), i.e. at most 10 objects)."""
    def key(scene):
        return tuple((o.shape, o.colour_name, round(o.pos[0], 4), round(o.pos[1], 4)) for o in scene.objects)

    train = {key(sample_scene(s, "train", SimConfig(n_objects=(4, 12)))) for s in range(200)}
    for seed in SEEDS:
        dense = sample_scene(seed, "dense", SimConfig())
        assert key(dense) not in train
        assert len(dense.objects) > max(SimConfig().n_objects)
    # the other splits are untouched (no look-alikes, the config's object count)
    assert sample_scene(3, "train", SimConfig()).lookalikes == ()


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_dense_scenes_settle_without_interpenetration(seed):
    from sim.env import GraspEnv
    with GraspEnv(SimConfig(split="dense", render_observations=False)) as env:
        env.reset(seed=seed)
        assert env.n_objects >= 12
        m, d = env.model, env.data
        start = np.array([d.xpos[b].copy() for b in env._obj_body])
        env.advance(500)  # 1 s more
        end = np.array([d.xpos[b].copy() for b in env._obj_body])
        obj_bodies = set(int(b) for b in env._obj_body)
        table = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "table")
        worst = 0.0
        for c in d.contact[: d.ncon]:
            b1, b2 = int(m.geom_bodyid[c.geom1]), int(m.geom_bodyid[c.geom2])
            if (b1 in obj_bodies or c.geom1 == table) and (b2 in obj_bodies or c.geom2 == table):
                worst = min(worst, float(c.dist))
        assert worst > -0.002, f"objects interpenetrate by {-worst * 1000:.1f} mm"
        assert np.abs(end - start).max() < 0.01, "objects still moving 1 s after the reset"
        assert all(env.object_lift(i) > -0.01 for i in range(env.n_objects)), "an object left the table"
