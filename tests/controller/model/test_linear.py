"""oneDNN linear layers: the same function as ``F.linear`` where used, ``F.linear`` wherever a
gradient, autocast or compilation needs it, and no change to parameters or state-dict names."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from controller.model.common import linear as lin

pytestmark = pytest.mark.skipif(not lin.onednn_linear_available(), reason="this torch build has no oneDNN linear")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 32))


def _calls(monkeypatch):
    seen = []
    real = torch.ops.mkldnn._linear_pointwise

    class Spy:
        def __call__(self, *a):
            seen.append(a[0].shape)
            return real(*a)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Spy())
    return seen


def test_switch_keeps_parameters_and_names_and_switches_back():
    net = _net()
    before = {k: (v.data_ptr(), v.clone()) for k, v in net.state_dict().items()}
    assert lin.set_onednn_linear(net, True) == 2
    assert all(type(m) is lin.OneDNNLinear for m in net if isinstance(m, nn.Linear))
    after = net.state_dict()
    assert list(after) == list(before)
    assert all(after[k].data_ptr() == p and torch.equal(after[k], v) for k, (p, v) in before.items())
    assert lin.set_onednn_linear(net, False) == 2
    assert all(type(m) is nn.Linear for m in net if isinstance(m, nn.Linear))


def test_inference_equals_f_linear_and_uses_onednn(monkeypatch):
    net = _net()
    x = torch.randn(3, 7, 48)
    ref = net(x)
    lin.set_onednn_linear(net, True)
    seen = _calls(monkeypatch)
    with torch.inference_mode():
        fast = net(x)
    with torch.no_grad():
        fast_ng = net(x)
    assert len(seen) == 4
    assert (fast - ref).abs().max().item() <= 1e-5 and torch.equal(fast, fast_ng)


def test_gradients_autocast_and_frozen_layers(monkeypatch):
    net = _net()
    lin.set_onednn_linear(net, True)
    seen = _calls(monkeypatch)
    x = torch.randn(4, 48)
    net(x).sum().backward()                     # trainable weights: F.linear, gradients flow
    assert not seen and net[0].weight.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert net(x).dtype == torch.bfloat16   # autocast keeps F.linear (bf16 matmuls)
    assert not seen
    net.requires_grad_(False)                   # frozen layers fed by frozen layers: no graph needed
    y = net(x)
    assert len(seen) == 2 and not y.requires_grad
    lin.set_onednn_linear(net, False)
    assert (y - net(x)).abs().max().item() <= 1e-5


def test_mask_transformer_and_out_proj_follow_the_switch(monkeypatch):
    from controller.model.vision.mask_transformer import MaskTransformer
    torch.manual_seed(0)
    mt = MaskTransformer(64, 8, 128, 2).eval()
    x = torch.randn(2, 10, 64)
    with torch.no_grad():
        ref = mt(x)
    n = lin.set_onednn_linear(mt, True)
    assert n == 2 * 3  # linear1, linear2, self_attn.out_proj per layer
    seen = _calls(monkeypatch)
    with torch.no_grad():
        fast = mt(x)
    assert len(seen) == 2 * 4  # + the in-projection through linear()
    assert (fast - ref).abs().max().item() <= 1e-5


def test_policy_uses_it_by_default_and_equals_the_mkl_path():
    from tests.controller.conftest import build_policy, fitted_normalizer, random_obs
    policy, cfg = build_policy("tiny")
    policy.set_normalizer(fitted_normalizer())
    policy.eval()
    assert policy.onednn_linear and any(type(m) is lin.OneDNNLinear for m in policy.modules())
    obs, noise = random_obs(2, cfg.image_size, 3), torch.randn(2, 64, 13, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        fast = policy.predict_action(obs, noise=noise)
        policy.set_onednn_linear(False)
        assert not any(type(m) is lin.OneDNNLinear for m in policy.modules())
        slow = policy.predict_action(obs, noise=noise)
    assert (fast - slow).abs().max().item() <= 1e-4
