"""Policy API: predict_action / compute_loss / ChunkPolicy on the tiny preset."""
import numpy as np
import pytest
import torch

from controller.common.shape_meta import ShapeMetaError
from controller.policy.dexgraspvla_controller import noise_assignment
from tests.controller.conftest import random_obs


def test_predict_action_shape_and_determinism(make_policy):
    policy, cfg = make_policy()
    policy.eval()
    obs = random_obs(3, cfg.image_size)
    noise = torch.randn(3, 64, 13)
    a = policy.predict_action(obs, noise=noise)
    b = policy.predict_action(obs, noise=noise)
    assert a.shape == (3, 64, 13)
    assert torch.equal(a, b)
    # unnormalised: the DDIM sample is clipped to [-1, 1] in normalised space -> fitted action range
    lo = policy.normalizer["action"].unnormalize(-torch.ones(13))
    hi = policy.normalizer["action"].unnormalize(torch.ones(13))
    assert torch.all(a >= lo - 1e-4) and torch.all(a <= hi + 1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_kv_policy_matches_straightforward(make_policy, seed):
    policy, cfg = make_policy()
    policy.eval()
    obs = random_obs(2, cfg.image_size, seed)
    noise = torch.randn(2, 64, 13, generator=torch.Generator().manual_seed(seed))
    policy.cache_condition_kv = True
    fast, rec_fast = policy.predict_action(obs, noise=noise, return_attention=True)
    policy.cache_condition_kv = False
    slow, rec_slow = policy.predict_action(obs, noise=noise, return_attention=True)
    assert (fast - slow).abs().max().item() <= 1e-4
    assert np.abs(rec_fast["attn"].astype(np.float32) - rec_slow["attn"].astype(np.float32)).max() <= 1e-3


def test_attention_record(make_policy):
    policy, cfg = make_policy()
    policy.eval()
    _, rec = policy.predict_action(random_obs(3, cfg.image_size), return_attention=True)
    steps = policy.num_inference_steps
    n_tok = int(rec["token_part_sizes"].sum())
    assert rec["attn"].shape == (steps, 2, 2, 2, n_tok)  # steps, blocks, samples (first 2), heads, tokens
    assert list(rec["token_part_names"]) == ["head", "wrist", "state", "time"]
    assert list(rec["token_part_sizes"]) == [16, 16, 1, 1] and list(rec["head_grid"]) == [4, 4]
    np.testing.assert_allclose(rec["attn"].astype(np.float32).sum(-1), 1.0, atol=5e-3)


def test_loss_ignores_padded_steps(make_policy):
    """With sample prediction the target is the clean chunk: the loss must equal the mean squared
    error over the non-padded steps only (captured predictions, recomputed here)."""
    policy, cfg = make_policy(overrides=["policy.noise_scheduler.prediction_type=sample"])
    policy.train()
    captured = {}
    policy.model.register_forward_hook(lambda m, i, o: captured.__setitem__("pred", o[0].detach()))
    obs = random_obs(4, cfg.image_size)
    action = torch.rand(4, 64, 13)
    pad = torch.zeros(4, 64, dtype=torch.bool)
    pad[:, 40:] = True
    pad[0] = False
    loss = policy.compute_loss({"obs": obs, "action": action, "action_is_pad": pad}).item()
    target = policy.normalizer["action"].normalize(action)
    err = (captured["pred"] - target) ** 2
    expected = err[~pad].mean().item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert loss != pytest.approx(err.mean().item(), rel=1e-3)  # padded steps would change it
    policy.mask_padded_actions = False
    loss_all = policy.compute_loss({"obs": obs, "action": action, "action_is_pad": pad}).item()
    err_all = ((captured["pred"] - target) ** 2).mean().item()
    assert loss_all == pytest.approx(err_all, rel=1e-5)


def test_loss_backward_reaches_trainable_parts_only(make_policy):
    policy, cfg = make_policy()
    policy.train()
    loss = policy.compute_loss({"obs": random_obs(2, cfg.image_size), "action": torch.rand(2, 64, 13),
                                "action_is_pad": torch.zeros(2, 64, dtype=torch.bool)})
    loss.backward()
    assert policy.obs_encoder.head_net[0].weight.grad is not None
    assert policy.obs_encoder.mask_process_net["patch_embed"][0].weight.grad is not None
    assert all(p.grad is None for p in policy.obs_encoder.dino_head.parameters())


def test_noise_assignment_is_a_permutation_that_lowers_distance():
    g = torch.Generator().manual_seed(0)
    data, noise = torch.randn(8, 64, 13, generator=g), torch.randn(8, 64, 13, generator=g)
    perm = noise_assignment(data, noise)
    assert sorted(perm.tolist()) == list(range(8))
    before = (data - noise).flatten(1).norm(dim=1).sum()
    after = (data - noise[perm]).flatten(1).norm(dim=1).sum()
    assert after <= before + 1e-5


def test_bad_observation_is_named(make_policy):
    policy, cfg = make_policy()
    obs = random_obs(1, cfg.image_size)
    obs["right_state"] = torch.zeros(1, 1, 12)
    with pytest.raises(ShapeMetaError, match="right_state"):
        policy.predict_action(obs)
    with pytest.raises(ValueError, match="noise must have shape"):
        policy.predict_action(random_obs(1, cfg.image_size), noise=torch.zeros(1, 8, 13))


def test_chunk_policy_on_raw_observation(make_policy):
    from controller.policy.chunk_runner import ChunkPolicy

    policy, cfg = make_policy()
    runner = ChunkPolicy(policy)
    rng = np.random.default_rng(0)
    raw = {"right_cam_img": rng.integers(0, 255, (480, 640, 3), dtype=np.uint8),
           "rgbm": rng.integers(0, 255, (480, 640, 4), dtype=np.uint8),
           "right_state": np.zeros(13, dtype=np.float32)}
    chunk = runner.predict_chunk(raw, noise=torch.zeros(64, 13))
    assert chunk.shape == (64, 13) and chunk.dtype == np.float32
    raw["rgbm"] = raw["rgbm"][..., :3]
    with pytest.raises(ShapeMetaError, match="rgbm"):
        runner.predict_chunk(raw)


@pytest.mark.parametrize("cache_kv", [True, False])
def test_sample_actions_equals_one_prediction_per_noise_draw(make_policy, cache_kv):
    """K samples per observation from one encoding (and, with the K/V cache, one condition
    projection) equal K separate predictions with the same noise."""
    policy, cfg = make_policy()
    policy.eval()
    policy.cache_condition_kv = cache_kv
    obs = random_obs(2, cfg.image_size, 4)
    noise = torch.randn(2, 3, 64, 13, generator=torch.Generator().manual_seed(4))
    many = policy.sample_actions(obs, 3, noise=noise)
    assert many.shape == (2, 3, 64, 13)
    for k in range(3):
        one = policy.predict_action(obs, noise=noise[:, k])
        assert (many[:, k] - one).abs().max().item() <= 1e-5
    acts, record = policy.sample_actions(obs, 3, noise=noise, return_attention=True)
    assert torch.allclose(acts, many, atol=1e-6) and record["attn"].shape[0] == policy.num_inference_steps
    # the attention record is that of each observation's first sample
    _, first = policy.predict_action(obs, noise=noise[:, 0], return_attention=True)
    assert record["attn"].shape == first["attn"].shape
    assert np.abs(record["attn"].astype(np.float32) - first["attn"].astype(np.float32)).max() <= 1e-3
    with pytest.raises(ValueError, match="num_samples"):
        policy.sample_actions(obs, 0)
    with pytest.raises(ValueError, match=r"noise must have shape \(B, 3"):
        policy.sample_actions(obs, 3, noise=noise[:, :2])


def _raw_obs(seed=0):
    rng = np.random.default_rng(seed)
    return {"right_cam_img": rng.integers(0, 255, (480, 640, 3), dtype=np.uint8),
            "rgbm": rng.integers(0, 255, (480, 640, 4), dtype=np.uint8),
            "right_state": np.zeros(13, dtype=np.float32)}


def test_chunk_policy_mean_of_samples(make_policy):
    from controller.policy.chunk_runner import ChunkPolicy

    policy, _ = make_policy()
    runner = ChunkPolicy(policy, num_samples=3, keep_freed_memory=False)
    single = ChunkPolicy(policy, keep_freed_memory=False)
    raw = _raw_obs(1)
    noise = torch.randn(3, 64, 13, generator=torch.Generator().manual_seed(1))
    mean = runner.predict_chunk(raw, noise=noise)
    expected = np.mean([single.predict_chunk(raw, noise=noise[k]) for k in range(3)], axis=0)
    assert mean.shape == (64, 13) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, expected, atol=1e-5)
    with pytest.raises(ValueError, match="num_samples"):
        ChunkPolicy(policy, num_samples=0)


def test_chunk_policy_temporal_ensemble_follows_consumed_and_reset(make_policy):
    """With ensembling, the second chunk's first rows blend in the first chunk's rows 6..; reset()
    starts afresh (the loop calls it per attempt, consumed(n) after executing n actions)."""
    from controller.policy.chunk_runner import ChunkPolicy
    from controller.policy.temporal_ensemble import TemporalEnsemble

    policy, _ = make_policy()
    plain = ChunkPolicy(policy, keep_freed_memory=False)
    runner = ChunkPolicy(policy, keep_freed_memory=False, temporal_ensemble=0.2)
    n1, n2 = (torch.randn(64, 13, generator=torch.Generator().manual_seed(s)) for s in (5, 6))
    raw1, raw2 = _raw_obs(2), _raw_obs(3)
    c1, c2 = plain.predict_chunk(raw1, noise=n1), plain.predict_chunk(raw2, noise=n2)
    np.testing.assert_allclose(runner.predict_chunk(raw1, noise=n1), c1, atol=1e-6)
    runner.consumed(6)
    blended = runner.predict_chunk(raw2, noise=n2)
    ref = TemporalEnsemble(0.2)
    ref.add(c1)
    ref.advance(6)
    np.testing.assert_allclose(blended, ref.add(c2), atol=1e-5)
    assert not np.allclose(blended[:6], c2[:6])
    runner.reset()
    np.testing.assert_allclose(runner.predict_chunk(raw2, noise=n2), c2, atol=1e-6)
