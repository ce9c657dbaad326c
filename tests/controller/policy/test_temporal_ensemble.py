"""Temporal ensembling of overlapping action chunks (pure numpy, no model)."""
import math

import numpy as np
import pytest

from controller.policy.temporal_ensemble import TemporalEnsemble


def _chunk(rng, horizon=64, dim=13):
    return rng.normal(size=(horizon, dim)).astype(np.float32)


def test_first_chunk_is_returned_unchanged():
    rng = np.random.default_rng(0)
    c = _chunk(rng)
    out = TemporalEnsemble(0.1).add(c)
    assert out.dtype == np.float32 and out.shape == c.shape
    np.testing.assert_array_equal(out, c)


@pytest.mark.parametrize("decay", [0.0, 0.115, 0.5])
def test_blend_matches_explicit_weighted_mean(decay):
    """After chunks at steps 0, 6 and 12, row j is the mean of every prediction for step 12 + j,
    weighted exp(-decay * age)."""
    rng = np.random.default_rng(1)
    ens = TemporalEnsemble(decay)
    chunks = [_chunk(rng) for _ in range(3)]
    for c in chunks[:-1]:
        ens.add(c)
        ens.advance(6)
    out = ens.add(chunks[-1])
    for j in (0, 5, 40, 51, 52, 57, 58, 63):
        preds, weights = [], []
        for k, c in enumerate(chunks):
            start, age = 6 * k, 12 - 6 * k
            if 12 + j - start < 64:
                preds.append(c[12 + j - start].astype(np.float64))
                weights.append(math.exp(-decay * age))
        expected = np.average(np.stack(preds), axis=0, weights=weights)
        np.testing.assert_allclose(out[j], expected, rtol=1e-5, atol=1e-6)


def test_large_decay_is_the_newest_chunk():
    rng = np.random.default_rng(2)
    ens = TemporalEnsemble(60.0)
    ens.add(_chunk(rng))
    ens.advance(6)
    new = _chunk(rng)
    np.testing.assert_allclose(ens.add(new), new, atol=1e-6)


def test_constant_predictions_stay_constant_and_old_chunks_drop_out():
    """Agreeing chunks blend to themselves; chunks that no longer overlap are dropped."""
    ens = TemporalEnsemble(0.0, horizon=64)
    c = np.full((64, 13), 0.3, np.float32)
    for _ in range(20):
        np.testing.assert_allclose(ens.add(c), c, atol=1e-7)
        ens.advance(6)
    now = 20 * 6
    assert len(ens) == sum(1 for start in range(0, now, 6) if now - start < 64)  # the last 64 steps only


def test_reset_and_repredict_without_advancing():
    rng = np.random.default_rng(3)
    ens = TemporalEnsemble(0.0)
    ens.add(_chunk(rng))
    ens.advance(6)
    ens.add(_chunk(rng))
    again = _chunk(rng)
    out = ens.add(again)  # same step: replaces the chunk predicted at this step
    assert len(ens) == 2
    ens.reset()
    assert len(ens) == 0
    np.testing.assert_array_equal(ens.add(again), again)
    assert not np.allclose(out, again)


def test_bad_input_is_refused_with_clear_errors():
    with pytest.raises(ValueError, match="decay"):
        TemporalEnsemble(-1.0)
    with pytest.raises(ValueError, match="decay"):
        TemporalEnsemble(float("nan"))
    ens = TemporalEnsemble(0.1, horizon=8)
    with pytest.raises(ValueError, match=r"\(T, D\)"):
        ens.add(np.zeros(13))
    with pytest.raises(ValueError, match="horizon"):
        ens.add(np.zeros((9, 13)))
    ens.add(np.zeros((8, 13)))
    ens.advance(2)
    with pytest.raises(ValueError, match="width"):
        ens.add(np.zeros((8, 7)))
    with pytest.raises(ValueError, match="n >= 0"):
        ens.advance(-1)
