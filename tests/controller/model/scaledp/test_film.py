"""Reasoning FiLM: identity at initialisation, masked mean pooling, gradients."""
import pytest
import torch

from controller.model.scaledp import FiLM, ReasoningFiLM, ScaleDPConfig, ScaleDPExpert, masked_mean


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster, and much faster on a shared, loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(B=3, L=5, D=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(B, D, generator=g)                                 # (B, D)
    reasoning = torch.randn(B, L, D, generator=g)                         # (B, L, D)
    mask = torch.ones(B, L, dtype=torch.bool)                             # (B, L)
    mask[1, 2:] = False
    return cond, reasoning, mask


def _perturb(module, seed=0, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def test_film_identity_at_init():
    torch.manual_seed(0)
    film = FiLM(feature_dim=12, condition_dim=7)
    x = torch.randn(4, 12)
    assert torch.equal(film(x, torch.randn(4, 7)), x)
    rf = ReasoningFiLM(12)
    cond, reasoning, mask = _data()
    assert torch.equal(rf(cond, reasoning, mask), cond)
    assert rf(cond, reasoning, mask).shape == (3, 12)


def test_masked_mean():
    cond, reasoning, mask = _data()
    pooled, has_any = masked_mean(reasoning, mask)
    assert torch.allclose(pooled[1], reasoning[1, :2].mean(0))
    assert torch.allclose(pooled[0], reasoning[0].mean(0))
    assert has_any.all()
    changed = reasoning.clone()
    changed[1, 2:] = 100.0                                                # masked tokens do not count
    assert torch.equal(masked_mean(changed, mask)[0], pooled)
    full, _ = masked_mean(reasoning, None)
    assert torch.allclose(full, reasoning.mean(1))
    empty = mask.clone()
    empty[2] = False
    pooled, has_any = masked_mean(reasoning, empty)
    assert has_any.tolist() == [True, True, False] and torch.equal(pooled[2], torch.zeros(12))


def test_film_modulates_after_training_and_skips_empty_rows():
    torch.manual_seed(0)
    rf = ReasoningFiLM(12, reasoning_dim=20, hidden_dim=8)               # widths may differ
    _perturb(rf)
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(3, 12, generator=g)
    reasoning = torch.randn(3, 4, 20, generator=g)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2] = False                                                       # no reasoning tokens
    out = rf(cond, reasoning, mask)
    assert not torch.allclose(out[:2], cond[:2])
    assert torch.equal(out[2], cond[2])
    assert torch.equal(rf(cond, None), cond)
    r, _ = rf.pool(reasoning, mask)
    expected = cond * (1 + rf.film.scale_fc(r)) + rf.film.shift_fc(r)
    assert torch.allclose(out[:2], expected[:2])


def test_film_gradients():
    """At init the zero-initialised scale/shift maps get gradients, the projector does not (its
    output is multiplied by zero weights); after one step both do."""
    torch.manual_seed(0)
    rf = ReasoningFiLM(12)
    cond, reasoning, mask = _data()
    opt = torch.optim.SGD(rf.parameters(), lr=0.1)
    for step in range(2):
        opt.zero_grad()
        (rf(cond, reasoning, mask) ** 2).sum().backward()
        zero = {n for n, p in rf.named_parameters() if not p.grad.abs().sum() > 0}
        if step == 0:
            assert zero == {"projector.0.weight", "projector.0.bias", "projector.2.weight", "projector.2.bias"}
        opt.step()
    assert zero == set()


def test_expert_with_reasoning_equals_without_at_init():
    """End to end: an untrained FiLM leaves the expert's loss and samples unchanged."""
    torch.manual_seed(0)
    cfg = ScaleDPConfig(action_dim=3, horizon=6, cond_dim=12, state_dim=2, depth=1, width=16, num_heads=2,
                        combine_hidden=16, frequency_dim=16)
    expert = ScaleDPExpert(cfg)
    with torch.no_grad():                                                 # move only the ScaleDP off zero
        g = torch.Generator().manual_seed(2)
        for p in expert.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    cond, reasoning, mask = _data(D=12)
    g = torch.Generator().manual_seed(3)
    actions = torch.rand(3, 6, 3, generator=g)
    state = torch.randn(3, 2, generator=g)
    noise = torch.randn(3, 6, 3, generator=g)
    t = torch.tensor([1, 50, 99])
    with_r = expert.compute_loss(actions, None, cond, state, reasoning, mask, noise=noise, timesteps=t)
    without = expert.compute_loss(actions, None, cond, state, noise=noise, timesteps=t)
    assert torch.equal(with_r, without)
    s1 = expert.sample(cond, state, reasoning, mask, noise=noise, num_inference_steps=3)
    s2 = expert.sample(cond, state, None, None, noise=noise, num_inference_steps=3)
    assert torch.equal(s1, s2)
