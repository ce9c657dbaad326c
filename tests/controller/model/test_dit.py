"""Action DiT: cached condition K/V equals the straightforward path; paper sizes; masks."""
import pytest
import torch

from controller.model.diffusion.dit import TransformerForActionDiffusion
from tests.controller.conftest import build_policy


def _dit(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(input_dim=13, output_dim=13, action_horizon=16, n_layer=3, n_head=4, n_emb=32,
                max_cond_tokens=41, p_drop_attn=0.1)
    args.update(kw)
    return TransformerForActionDiffusion(**args).eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("capture", [False, True])
def test_cached_equals_uncached(seed, capture):
    dit = _dit(seed)
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(3, 40, 32, generator=g)
    cache = dit.prepare_condition(cond)
    for t in (49, 17, 0):  # several denoising steps reuse one cache
        x = torch.randn(3, 16, 13, generator=g)
        ref, ref_attn = dit(x, t, cond, capture_attention=capture)
        out, attn = dit.forward_cached(x, t, cache, capture_attention=capture)
        assert (ref - out).abs().max().item() <= 1e-5
        if capture:
            assert len(attn) == 3 and attn[0].shape == (3, 4, 41)
            for a, b in zip(ref_attn, attn):
                assert (a - b).abs().max().item() <= 1e-5
            assert torch.allclose(attn[0].sum(-1), torch.ones(3, 4), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_precomputed_time_rows_equal_uncached(seed):
    """prepare_condition(cond, timesteps) projects the time-token rows of all steps up front; steps
    not in the list fall back to a per-step projection."""
    dit = _dit(seed)
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(2, 40, 32, generator=g)
    cache = dit.prepare_condition(cond, timesteps=torch.tensor([49, 30, 17, 0]))
    assert cache.timesteps == [49, 30, 17, 0] and cache.time_keys[0].shape == (4, 4, 1, 8)
    for t in (17, 49, 5, 0, torch.tensor(30)):  # 5 is not precomputed
        x = torch.randn(2, 16, 13, generator=g)
        ref, _ = dit(x, t, cond)
        out, _ = dit.forward_cached(x, t, cache)
        assert (ref - out).abs().max().item() <= 1e-5


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("capture", [False, True])
def test_cache_shared_by_several_samples_per_observation(fused, capture):
    """A cache of B observations serves B * g samples (g noise draws each, consecutive): the same
    outputs and attention as the straightforward path on the repeated condition."""
    from controller.model.diffusion.layers import set_fused_attention
    dit = _dit(4)
    set_fused_attention(dit, fused)
    gen = torch.Generator().manual_seed(4)
    cond = torch.randn(2, 40, 32, generator=gen)
    cache = dit.prepare_condition(cond, timesteps=[49, 17])
    for t in (49, 17, 5):  # precomputed time rows and a per-step one
        x = torch.randn(6, 16, 13, generator=gen)       # 3 samples per observation
        ref, ref_attn = dit(x, t, cond.repeat_interleave(3, dim=0), capture_attention=capture)
        out, attn = dit.forward_cached(x, t, cache, capture_attention=capture)
        assert (ref - out).abs().max().item() <= 1e-5
        if capture:
            assert attn[0].shape == (6, 4, 41)
            assert max((a - b).abs().max().item() for a, b in zip(ref_attn, attn)) <= 1e-5
    with pytest.raises(ValueError, match="not a multiple"):
        dit.forward_cached(torch.randn(5, 16, 13), 5, cache)
    with pytest.raises(ValueError, match="per-sample timesteps"):
        dit.forward_cached(torch.randn(6, 16, 13), torch.arange(6), cache)


@pytest.mark.parametrize("masked", [False, True])
def test_explicit_attention_equals_fused(masked):
    """fused_attn=False (the benchmark's straightforward path) computes the same function."""
    from controller.model.diffusion.layers import set_fused_attention
    dit = _dit(3)
    cond, x = torch.randn(2, 40, 32), torch.randn(2, 16, 13)
    mask = None
    if masked:
        mask = torch.ones(2, 41, dtype=torch.bool)
        mask[0, :25] = False
    fused, fa = dit(x, 7, cond, cond_mask=mask, capture_attention=True)
    assert set_fused_attention(dit, False) == 6  # 3 blocks x (self, cross)
    plain, pa = dit(x, 7, cond, cond_mask=mask, capture_attention=True)
    set_fused_attention(dit, True)
    assert (fused - plain).abs().max().item() <= 1e-5
    for a, b in zip(fa, pa):
        assert (a - b).abs().max().item() <= 1e-5


def test_condition_mask_hides_tokens():
    dit = _dit()
    cond = torch.randn(2, 40, 32)
    x = torch.randn(2, 16, 13)
    mask = torch.ones(2, 41, dtype=torch.bool)
    mask[:, :20] = False
    out_a, attn = dit(x, 5, cond, cond_mask=mask, capture_attention=True)
    cond_b = cond.clone()
    cond_b[:, :20] = torch.randn(2, 20, 32)  # changing hidden tokens must not change the output
    out_b, _ = dit(x, 5, cond_b, cond_mask=mask)
    assert torch.allclose(out_a, out_b, atol=1e-6)
    assert attn[0][:, :, :20].abs().max() == 0


def test_too_many_condition_tokens():
    dit = _dit()
    with pytest.raises(ValueError, match="max_cond_tokens"):
        dit(torch.randn(1, 16, 13), 0, torch.randn(1, 41, 32))


def test_paper_preset_has_163m_trainable_parameters():
    with torch.device("meta"):
        policy, cfg = build_policy("paper")
    n = policy.num_trainable_parameters()
    assert abs(n - 163e6) / 163e6 < 0.01, n
    enc = policy.obs_encoder
    assert enc.part_lengths == [1369, 1369, 1] and enc.feature_dim == 1024
    assert policy.model.max_cond_tokens == 2740 and len(policy.model.blocks) == 12
    assert enc.dino_head.feature_dim == 768 and enc.dino_wrist.feature_dim == 1024
    assert not any(p.requires_grad for p in enc.dino_head.parameters())


def test_reference_state_dict_names():
    with torch.device("meta"):
        policy, _ = build_policy("paper")
    keys = set(policy.state_dict())
    for k in ["obs_encoder.mask_process_net.patch_embed.0.weight", "obs_encoder.mask_process_net.patch_embed.3.bias",
              "obs_encoder.mask_process_net.transformer.layers.3.self_attn.in_proj_weight",
              "obs_encoder.head_net.0.weight", "obs_encoder.head_net.5.weight", "obs_encoder.state_net.4.weight",
              "obs_encoder.dino_head.blocks.11.ls1.gamma", "obs_encoder.dino_wrist.blocks.23.attn.qkv.weight",
              "model.blocks.11.cross_attn.kv.weight", "model.blocks.0.attn.q_norm.weight",
              "model.blocks.0.ffn.fc2.bias", "model.time_emb.mlp.2.weight", "model.cond_pos_emb", "model.pos_emb",
              "model.ln_f.weight", "model.head.weight", "model.input_emb.weight"]:
        assert k in keys, k


def test_condition_cache_keys_are_stored_transposed_and_attend_like_sdpa():
    """The cache keeps keys and values as (B, h, d, L) memory, equal to the per-block ``project_kv``
    of the same tokens; the cross-attention's inference path multiplies by them directly and gives
    what fused SDPA gives on the same tensors."""
    from controller.model.diffusion.layers import attention_keys_transposed
    torch.manual_seed(0)
    dit = TransformerForActionDiffusion(13, 13, 8, n_layer=2, n_head=4, n_emb=64, max_cond_tokens=40).eval()
    for blk in dit.blocks:  # a non-trivial k-norm scale and bias
        torch.nn.init.normal_(blk.cross_attn.k_norm.weight, 1.0, 0.3)
        torch.nn.init.normal_(blk.cross_attn.kv.bias, 0.0, 0.1)
    c = torch.randn(2, 31, 64)
    keys, values = dit.project_condition(c)
    for blk, k, v in zip(dit.blocks, keys, values):
        assert k.shape == v.shape == (2, 4, 31, 16)
        assert k.stride(-2) == 1 and k.transpose(-2, -1).is_contiguous()
        assert v.stride(-2) == 1 and v.transpose(-2, -1).is_contiguous()
        k_ref, v_ref = blk.cross_attn.project_kv(c)
        torch.testing.assert_close(k, k_ref, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(v, v_ref, atol=2e-6, rtol=1e-5)
    q = torch.randn(2, 4, 8, 16)
    k, v = keys[0], values[0]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k.contiguous(), v.contiguous())
    torch.testing.assert_close(attention_keys_transposed(q, k, v), expected, atol=1e-6, rtol=1e-5)
