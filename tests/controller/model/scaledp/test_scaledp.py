"""ScaleDP (adaLN-Zero DiT action expert) and ScaleDPExpert (DDPM loss, DDIM sampling)."""
import pytest
import torch

from controller.model.scaledp import (PRESETS, ScaleDP, ScaleDPConfig, ScaleDPExpert, count_parameters,
                                      hold_last_valid)

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster, and much faster on a shared, loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(action_dim=4, horizon=8, cond_dim=16, state_dim=5, depth=2, width=32, num_heads=4,
            combine_hidden=24, frequency_dim=32)


def _cfg(**kw):
    return ScaleDPConfig(**{**TINY, **kw})


def _inputs(B=3, H=8, seed=0, L=6):
    g = torch.Generator().manual_seed(seed)
    actions = torch.rand(B, H, 4, generator=g) * 2 - 1                    # (B, H, A)
    cond = torch.randn(B, 16, generator=g)                                # (B, D_vlm)
    state = torch.randn(B, 5, generator=g)                                # (B, D_state)
    reasoning = torch.randn(B, L, 16, generator=g)                        # (B, L_r, D_vlm)
    mask = torch.ones(B, L, dtype=torch.bool)                             # (B, L_r)
    mask[0, 3:] = False
    return actions, cond, state, reasoning, mask


def _perturb(module, seed=0, std=0.05):
    """Move every parameter off its (possibly zero) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def _expert(seed=0, **kw):
    torch.manual_seed(seed)
    return ScaleDPExpert(_cfg(), **kw)


# ---------------------------------------------------------------------- shapes
def test_shapes():
    model = ScaleDP(_cfg())
    x, cond, state, _, _ = _inputs()
    assert model(x, torch.tensor([3, 50, 99]), cond, state).shape == (3, 8, 4)
    assert model(x, 7, cond, state).shape == (3, 8, 4)                    # scalar timestep
    assert model(x[:, :5], 7, cond, state).shape == (3, 5, 4)             # shorter chunk
    with pytest.raises(ValueError):
        model(torch.zeros(3, 9, 4), 7, cond, state)                       # longer than the horizon
    expert = _expert()
    actions, cond, state, reasoning, mask = _inputs()
    loss = expert.compute_loss(actions, torch.zeros(3, 8, dtype=torch.bool), cond, state, reasoning, mask)
    assert loss.shape == () and torch.isfinite(loss)
    assert expert.sample(cond, state, reasoning, mask, num_inference_steps=3).shape == (3, 8, 4)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        ScaleDPExpert(_cfg(), prediction_type="v_prediction")
    with pytest.raises(ValueError):
        ScaleDPConfig.preset("XL")
    with pytest.raises(ValueError):
        ScaleDP(_cfg(width=30, num_heads=4))
    expert = _expert(use_reasoning_film=False)
    actions, cond, state, reasoning, mask = _inputs()
    with pytest.raises(ValueError):
        expert.compute_loss(actions, None, cond, state, reasoning, mask)


# ---------------------------------------------------------------------- adaLN-Zero
def test_blocks_are_identity_at_init():
    model = ScaleDP(_cfg(depth=3))
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 8, 32, generator=g)                                # (B, H, W)
    c = torch.randn(2, 32, generator=g)                                   # (B, W)
    for block in model.blocks:
        assert torch.equal(block(h, c), h)
    x, cond, state, _, _ = _inputs(B=2)
    assert torch.equal(model(x, 10, cond, state), torch.zeros(2, 8, 4))   # zero final linear
    _perturb(model)
    assert not torch.equal(model.blocks[0](h, c), h)


# ---------------------------------------------------------------------- gradients
def _all_grads_nonzero(module):
    return [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


def test_gradients_reach_every_parameter_off_init():
    """Wiring check: with the zero-initialised layers moved off zero, one backward reaches all."""
    expert = _expert()
    _perturb(expert)
    actions, cond, state, reasoning, mask = _inputs()
    is_pad = torch.zeros(3, 8, dtype=torch.bool)
    is_pad[1, 6:] = True
    expert.compute_loss(actions, is_pad, cond, state, reasoning, mask).backward()
    assert _all_grads_nonzero(expert) == []


def test_gradients_from_the_real_init():
    """adaLN-Zero: at step 0 only the final linear gets a gradient (documented exception); after
    three optimiser steps every parameter (reasoning FiLM projector included) gets one."""
    expert = _expert()
    actions, cond, state, reasoning, mask = _inputs()
    opt = torch.optim.Adam(expert.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(3)
    for step in range(4):
        opt.zero_grad()
        expert.compute_loss(actions, None, cond, state, reasoning, mask, generator=g).backward()
        if step == 0:
            missing = set(_all_grads_nonzero(expert))
            assert set(n for n, _ in expert.named_parameters()) - missing == {
                "model.final_layer.linear.weight", "model.final_layer.linear.bias"}
        opt.step()
    assert _all_grads_nonzero(expert) == []


# ---------------------------------------------------------------------- padding
def test_hold_last_valid():
    a = torch.arange(12.0).reshape(1, 4, 3)                               # (1, 4, 3)
    pad = torch.tensor([[False, False, True, True]])
    out = hold_last_valid(a, pad)
    assert torch.equal(out[0, 2], a[0, 1]) and torch.equal(out[0, 3], a[0, 1])
    assert torch.equal(out[0, :2], a[0, :2])
    lead = torch.tensor([[True, False, True, False]])
    out = hold_last_valid(a, lead)
    assert torch.equal(out[0, 0], torch.zeros(3)) and torch.equal(out[0, 2], a[0, 1])
    assert hold_last_valid(a, None) is a


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_loss_ignores_padded_steps(prediction_type):
    expert = _expert(prediction_type=prediction_type)
    _perturb(expert)
    actions, cond, state, reasoning, mask = _inputs()
    is_pad = torch.zeros(3, 8, dtype=torch.bool)
    is_pad[0, 5:] = True
    is_pad[2, 2:] = True
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(3, 8, 4, generator=g)
    t = torch.tensor([5, 40, 90])
    base = expert.compute_loss(actions, is_pad, cond, state, reasoning, mask, noise=noise, timesteps=t)
    changed = actions.clone()
    changed[is_pad] = torch.randn(int(is_pad.sum()), 4, generator=g) * 10
    again = expert.compute_loss(changed, is_pad, cond, state, reasoning, mask, noise=noise, timesteps=t)
    assert torch.equal(base, again)
    valid_changed = actions.clone()
    valid_changed[0, 1] += 1.0
    other = expert.compute_loss(valid_changed, is_pad, cond, state, reasoning, mask, noise=noise, timesteps=t)
    assert not torch.equal(base, other)
    # everything padded: a defined zero loss, no division by zero
    all_pad = torch.ones(3, 8, dtype=torch.bool)
    assert expert.compute_loss(actions, all_pad, cond, state, noise=noise, timesteps=t).item() == 0.0


# ---------------------------------------------------------------------- overfitting
@pytest.mark.parametrize("prediction_type,steps", [("epsilon", 250), ("sample", 150)])
def test_overfits_four_chunks(prediction_type, steps):
    """A tiny expert learns 4 fixed chunks: the loss on fixed (noise, t) draws drops > 10x."""
    torch.manual_seed(0)
    cfg = ScaleDPConfig(action_dim=4, horizon=8, cond_dim=16, state_dim=4, depth=2, width=64, num_heads=4,
                        combine_hidden=64, frequency_dim=64)
    expert = ScaleDPExpert(cfg, prediction_type=prediction_type)
    g = torch.Generator().manual_seed(1)
    chunks = torch.rand(4, 8, 4, generator=g) * 2 - 1                     # (4, H, A)
    cond = torch.randn(4, 16, generator=g)                                # (4, D_vlm)
    state = torch.randn(4, 4, generator=g)                                # (4, D_state)
    A, C, S = chunks.repeat(8, 1, 1), cond.repeat(8, 1), state.repeat(8, 1)  # (32, ...)
    eval_noise = torch.randn(A.shape, generator=g)                        # (32, H, A)
    eval_t = torch.randint(0, 100, (32,), generator=g)                    # (32,)

    def evaluate():
        with torch.no_grad():
            return expert.compute_loss(A, None, C, S, noise=eval_noise, timesteps=eval_t).item()

    before = evaluate()
    opt = torch.optim.AdamW(expert.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(steps):
        loss = expert.compute_loss(A, None, C, S, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate()
    assert after < before / 10, (before, after)


# ---------------------------------------------------------------------- sampling
def test_sample_is_reproducible_given_noise():
    expert = _expert().eval()
    _perturb(expert)
    _, cond, state, reasoning, mask = _inputs()
    noise = torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(5))
    a = expert.sample(cond, state, reasoning, mask, noise=noise.clone(), num_inference_steps=5)
    b = expert.sample(cond, state, reasoning, mask, noise=noise.clone(), num_inference_steps=5)
    assert torch.equal(a, b) and a.shape == (3, 8, 4)
    c = expert.sample(cond, state, reasoning, mask, noise=noise + 0.5, num_inference_steps=5)
    assert not torch.equal(a, c)
    d1 = expert.sample(cond, state, generator=torch.Generator().manual_seed(2), num_inference_steps=4)
    d2 = expert.sample(cond, state, generator=torch.Generator().manual_seed(2), num_inference_steps=4)
    assert torch.equal(d1, d2)
    assert expert.sample(cond, state, num_inference_steps=2, horizon=6).shape == (3, 6, 4)
    assert a.abs().max() <= 1.0 + 1e-6                                    # clip_sample keeps [-1, 1]


# ---------------------------------------------------------------------- sizes
def _analytic_count(cfg: ScaleDPConfig) -> int:
    W, A, D, S, Hc = cfg.width, cfg.action_dim, cfg.cond_dim, cfg.state_dim, cfg.combine_hidden
    M = int(W * cfg.mlp_ratio)
    block = (3 * W * W + 3 * W) + (W * W + W) + (W * M + M + M * W + W) + (W * 6 * W + 6 * W)
    embed = (A * W + W) + (cfg.frequency_dim * W + W + W * W + W) + cfg.horizon * W
    cond = ((D + S) * Hc + Hc) + (Hc * Hc + Hc) + (Hc * D + D) + (D * W + W)
    final = (W * A + A) + (W * 2 * W + 2 * W)
    return cfg.depth * block + embed + cond + final


@pytest.mark.parametrize("size,low,high", [("S", 30e6, 45e6), ("B", 120e6, 150e6),
                                           ("L", 400e6, 500e6), ("H", 0.9e9, 1.1e9)])
def test_preset_parameter_counts_on_meta(size, low, high):
    """DexVLA's sizes with Qwen2-VL-2B's width (1536), 14-D actions/state, 50-step chunks, counted
    on the meta device (nothing allocated). Measured: S 37.3M, B 135.0M, L 462.6M, H 955.9M."""
    cfg = ScaleDPConfig.preset(size, action_dim=14, state_dim=14, cond_dim=1536, horizon=50)
    assert (cfg.depth, cfg.width, cfg.num_heads) == PRESETS[size]
    with torch.device("meta"):
        model = ScaleDP(cfg)
    assert all(p.device.type == "meta" for p in model.parameters())
    n = count_parameters(model)
    assert n == _analytic_count(cfg)
    assert low <= n <= high, n
