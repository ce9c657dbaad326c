"""Window indices, padding flags and the episode-level split."""
from __future__ import annotations

import numpy as np
import pytest

from controller.dataset.sampler import SequenceSampler, compute_window_indices, downsample_mask, get_val_mask

ENDS = np.array([3, 10, 11, 30])


def test_window_at_every_step_and_padding():
    s = SequenceSampler(ENDS, horizon=5)
    assert len(s) == 30
    starts = np.concatenate([[0], ENDS[:-1]])
    for i in range(len(s)):
        obs, act, pad = s.window(i)
        ep = int(np.searchsorted(ENDS, obs[0], side="right"))
        a, b = starts[ep], ENDS[ep]
        assert obs.shape == (1,) and act.shape == (5,) and pad.shape == (5,)
        assert act[0] == obs[0] and a <= act.min() and act.max() < b  # never crosses episodes
        n_real = min(5, b - obs[0])
        np.testing.assert_array_equal(act[:n_real], np.arange(obs[0], obs[0] + n_real))
        assert (act[n_real:] == b - 1).all()  # past the end: repeat the last step
        np.testing.assert_array_equal(pad, np.arange(5) >= n_real)


def test_episode_mask_and_no_padding():
    s = SequenceSampler(ENDS, horizon=5, episode_mask=np.array([False, True, False, True]))
    assert len(s) == 7 + 19
    s = SequenceSampler(ENDS, horizon=5, pad_after=False)
    assert len(s) == (7 - 4) + (19 - 4)  # episodes of 3 and 1 steps are too short
    assert not any(s.window(i)[2].any() for i in range(len(s)))


def test_multiple_obs_steps_pad_before():
    s = SequenceSampler(ENDS, horizon=4, n_obs_steps=2)
    assert len(s) == 30 + 4
    obs, act, pad = s.window(0)  # window starting one step before episode 0
    np.testing.assert_array_equal(obs, [0, 0])
    np.testing.assert_array_equal(act, [0, 0, 1, 2])
    np.testing.assert_array_equal(pad, [True, False, False, False])


def test_bad_arguments():
    with pytest.raises(ValueError):
        compute_window_indices(ENDS, None, horizon=2, n_obs_steps=3)
    with pytest.raises(ValueError, match="episode_mask"):
        compute_window_indices(ENDS, np.ones(3, bool), horizon=2)
    assert compute_window_indices(ENDS, np.zeros(4, bool), horizon=2).shape == (0, 3)


def test_val_mask_seeded_and_bounded():
    m = get_val_mask(20, 0.2, seed=1)
    assert m.sum() == 4
    np.testing.assert_array_equal(m, get_val_mask(20, 0.2, seed=1))
    assert not np.array_equal(m, get_val_mask(20, 0.2, seed=2))
    assert get_val_mask(10, 0.01, seed=0).sum() == 1      # at least one
    assert get_val_mask(3, 0.99, seed=0).sum() == 2       # never all
    assert get_val_mask(1, 0.5, seed=0).sum() == 0        # a single episode stays for training
    assert get_val_mask(10, 0.0, seed=0).sum() == 0


def test_downsample_mask():
    mask = np.array([True, False, True, True, True, False])
    d = downsample_mask(mask, 2, seed=3)
    assert d.sum() == 2 and not (d & ~mask).any()
    np.testing.assert_array_equal(d, downsample_mask(mask, 2, seed=3))
    np.testing.assert_array_equal(downsample_mask(mask, None), mask)
    np.testing.assert_array_equal(downsample_mask(mask, 10), mask)
