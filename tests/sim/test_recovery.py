"""Recovery demonstrations: a staged, unrecorded miss, then the expert's grasp from there."""
from __future__ import annotations

import numpy as np
import pytest

from sim.expert import ScriptedExpert, run_expert_episode
from sim.recovery import GRASPED_LIFT_M, MissSpec, sample_miss, stage_miss


def test_sampled_misses_cover_both_kinds_within_their_ranges():
    rng = np.random.default_rng(0)
    misses = [sample_miss(rng) for _ in range(400)]
    side = [m for m in misses if m.offset[2] == 0.0]
    high = [m for m in misses if m.offset[2] > 0.0]
    assert 0.45 < len(side) / len(misses) < 0.75 and high
    assert all(0.03 <= np.hypot(*m.offset[:2]) <= 0.06 for m in side)
    assert all(0.03 <= m.offset[2] <= 0.06 and np.hypot(*m.offset[:2]) <= 0.015 for m in high)
    assert all(0.4 <= m.lift_fraction <= 1.0 and 0 <= m.hold_steps <= 10 for m in misses)
    assert sample_miss(np.random.default_rng(5)) == sample_miss(np.random.default_rng(5))


@pytest.mark.parametrize("kwargs, field", [
    ({"offset": (0.0, 0.0), "lift_fraction": 0.5, "hold_steps": 0}, "offset"),
    ({"offset": (0.0, float("nan"), 0.0), "lift_fraction": 0.5, "hold_steps": 0}, "offset"),
    ({"offset": (0.0, 0.0, 0.0), "lift_fraction": 1.5, "hold_steps": 0}, "lift_fraction"),
    ({"offset": (0.0, 0.0, 0.0), "lift_fraction": 0.5, "hold_steps": -1}, "hold_steps"),
])
def test_bad_miss_spec_is_refused(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MissSpec(**kwargs)


def test_staged_miss_leaves_the_hand_raised_closed_and_empty(env_factory):
    """A sideways miss: the fingers close beside the box, the hand rises without it, nothing is
    rendered and the episode's step clock stays at zero."""
    with env_factory(render_observations=False) as env:
        env.reset(seed=1, split="train")
        start = env.object_pose(env.target)[0].copy()
        usable, why = stage_miss(env, ScriptedExpert(), MissSpec((0.05, 0.0, 0.0), 1.0, 3))
        assert usable, why
        assert env.steps == 0 and not env.success
        assert env.target_lift() < GRASPED_LIFT_M
        assert env.hand_height() > start[2] + 0.10          # raised well above the object
        assert np.all(env.hand_state()[:5] < 0.2)            # fingers closed on nothing


def test_staged_miss_that_catches_the_target_is_not_usable(env_factory):
    """No offset: the 'miss' is a real grasp, which is no starting point for a recovery."""
    with env_factory(render_observations=False) as env:
        env.reset(seed=1, split="train")
        usable, why = stage_miss(env, ScriptedExpert(), MissSpec((0.0, 0.0, 0.0), 1.0, 0))
    assert not usable and "lifted the target" in why


def test_recovery_episode_records_only_the_recovery_and_grasps(env_factory):
    with env_factory(render_observations=False) as env:
        normal = run_expert_episode(env, 1, "train", ScriptedExpert(), record=True)
        rec = run_expert_episode(env, 1, "train", ScriptedExpert(), record=True, recovery=True)
        again = run_expert_episode(env, 1, "train", ScriptedExpert(), record=True, recovery=True)
    assert rec["success"] and "skipped" not in rec
    states = np.stack(rec["frames"]["right_state"])
    actions = np.stack(rec["frames"]["action"])
    assert len(states) == len(actions) == rec["steps"]
    assert np.all(states[0, 7:] < 0.2)                        # starts from the closed, empty hand
    assert np.all(np.stack(normal["frames"]["right_state"])[0, 7:] > 0.8)  # (a normal episode: open)
    assert np.abs(states[0, :7] - np.stack(normal["frames"]["right_state"])[0, :7]).max() > 0.05
    assert actions[:, 7:12].max() > 0.95                       # the hand opens again ...
    assert actions[-1, 7:12].max() < 0.05                      # ... and closes on the target
    assert np.array_equal(states, np.stack(again["frames"]["right_state"]))  # seeded, deterministic


def test_unusable_miss_returns_a_skipped_record(env_factory):
    with env_factory(render_observations=False) as env:
        rec = run_expert_episode(env, 4, "train", ScriptedExpert(), record=True, recovery=True)
    assert not rec["success"] and rec["steps"] == 0 and rec["skipped"]
    assert rec["frames"] == {}
