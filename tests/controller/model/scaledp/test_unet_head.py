"""The 1-D conditional UNet head of the DexVLA expert (``policy.expert.head: unet``): shapes for
H = 64 and 50 (and odd lengths), gradients, padding, reasoning-FiLM identity at init, a training
step of the tiny policy, stage-1 -> stage-2 carry-over, checkpoint round trip."""
import pytest
import torch

from controller.model.scaledp import ConditionalUNet1D, ScaleDPExpert, UNetConfig, count_parameters


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(horizon=64, **kw):
    sizes = dict(action_dim=7, horizon=horizon, cond_dim=24, state_dim=5, down_dims=(16, 32, 64),
                 step_embed_dim=16, obs_embed_dim=16, frequency_dim=16)
    return UNetConfig(**{**sizes, **kw})


def _inputs(B, H, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, 7, generator=g), torch.randn(B, 24, generator=g), torch.randn(B, 5, generator=g))


@pytest.mark.parametrize("horizon", [64, 50])
def test_output_shapes(horizon):
    torch.manual_seed(0)
    net = ConditionalUNet1D(_cfg(horizon))
    x, cond, state = _inputs(3, horizon)
    out = net(x, torch.tensor([0, 10, 99]), cond, state)
    assert out.shape == (3, horizon, 7) and torch.isfinite(out).all()
    assert net(x, 5, cond, state).shape == (3, horizon, 7)                     # scalar timestep
    for H in (1, 13, horizon - 1):                                             # shorter chunks, odd lengths
        assert net(x[:, :H], 5, cond, state).shape == (3, H, 7)
    with pytest.raises(ValueError, match="exceeds the model horizon"):
        net(torch.randn(3, horizon + 1, 7), 5, cond, state)
    expert = ScaleDPExpert(_cfg(horizon))
    assert expert.head == "unet"
    assert expert.sample(cond, state, num_inference_steps=2).shape == (3, horizon, 7)
    assert expert.sample(cond, state, num_inference_steps=2, horizon=horizon // 2).shape == (3, horizon // 2, 7)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    expert = ScaleDPExpert(_cfg(50))
    x, cond, state = _inputs(4, 50)
    pad = torch.zeros(4, 50, dtype=torch.bool)
    pad[2, 40:] = True
    loss = expert.compute_loss(x, pad, cond, state, generator=torch.Generator().manual_seed(1))
    loss.backward()
    no_grad = [n for n, p in expert.model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert torch.isfinite(loss) and not no_grad, no_grad


def test_loss_ignores_padded_values():
    torch.manual_seed(0)
    expert = ScaleDPExpert(_cfg(50))
    x, cond, state = _inputs(2, 50)
    pad = torch.zeros(2, 50, dtype=torch.bool)
    pad[1, 30:] = True
    noise, t = torch.randn(2, 50, 7, generator=torch.Generator().manual_seed(4)), torch.tensor([3, 60])
    changed = x.clone()
    changed[1, 30:] = 123.0
    a = expert.compute_loss(x, pad, cond, state, noise=noise, timesteps=t)
    b = expert.compute_loss(changed, pad, cond, state, noise=noise, timesteps=t)
    assert torch.equal(a, b)


def test_reasoning_film_is_the_identity_at_init_with_the_unet_head():
    """As for ScaleDP: an untrained reasoning FiLM leaves the UNet expert's loss and samples unchanged."""
    torch.manual_seed(0)
    expert = ScaleDPExpert(_cfg(16))
    g = torch.Generator().manual_seed(3)
    x, cond, state = _inputs(3, 16)
    reasoning = torch.randn(3, 5, 24, generator=g)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 2:] = False
    noise, t = torch.randn(3, 16, 7, generator=g), torch.tensor([1, 50, 99])
    with_r = expert.compute_loss(x, None, cond, state, reasoning, mask, noise=noise, timesteps=t)
    assert torch.equal(with_r, expert.compute_loss(x, None, cond, state, noise=noise, timesteps=t))
    s1 = expert.sample(cond, state, reasoning, mask, noise=noise, num_inference_steps=3)
    assert torch.equal(s1, expert.sample(cond, state, None, None, noise=noise, num_inference_steps=3))


def test_parameter_count_of_the_default_sizes_on_meta():
    """Diffusion Policy's widths (256, 512, 1024), D_vlm = 1536, 14-D action/state: 70.9 M."""
    with torch.device("meta"):
        net = ConditionalUNet1D(UNetConfig(cond_dim=1536, action_dim=14, state_dim=14))
    assert count_parameters(net) == 70_937_102


# ---------------------------------------------------------------------------- the policy, head=unet
UNET = ["policy.expert.head=unet"]


def _policy(overrides=()):
    from tests.controller.policy.test_dexvla_policy import _policy as build
    return build(UNET + list(overrides))


def test_policy_training_step_and_round_trip(tmp_path):
    from controller.policy.loading import load_policy
    from controller.workspace.checkpoint import save_checkpoint
    from tests.controller.policy.test_dexvla_policy import A, B, H, _batch, _obs

    torch.manual_seed(0)
    policy, cfg = _policy()
    assert isinstance(policy.expert.model, ConditionalUNet1D) and policy.expert.model.config.down_dims == (16, 32)
    before = {k: v.clone() for k, v in policy.expert.model.state_dict().items()}
    opt = policy.get_optimizer(lr=1e-3, weight_decay=0.0)
    policy.train()
    for _ in range(2):
        opt.zero_grad()
        loss = policy.compute_loss(_batch())
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    after = policy.expert.model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    policy.eval()
    ckpt = save_checkpoint(str(tmp_path / "ckpt"), policy, cfg=cfg)
    loaded, _ = load_policy(ckpt)
    assert loaded.expert.head == "unet"
    noise = torch.randn(B, H, A, generator=torch.Generator().manual_seed(2))
    a, b = policy.predict_action(_obs(), noise=noise), loaded.predict_action(_obs(), noise=noise)
    assert a["action"].shape == (B, H, A) and torch.equal(a["action"], b["action"]) and a["reasoning"] == b["reasoning"]


def test_stage1_unet_expert_carries_to_stage2(tmp_path):
    """A stage-1 UNet expert loaded into a fresh stage-2 policy: the expert is identical and, with
    the untrained reasoning FiLM, gives the stage-1 samples for the same condition."""
    from controller.workspace.checkpoint import save_checkpoint

    s1, cfg = _policy(["policy.training_stage=1"])
    ckpt = save_checkpoint(str(tmp_path / "s1"), s1.eval(), cfg=cfg)
    s2, _ = _policy([f"policy.init_from={ckpt}"])
    assert s2.init_report["mode"] == "expert"
    assert not [k for k in s2.init_report["kept_init"] if k.startswith("expert.model.")]
    g = torch.Generator().manual_seed(1)
    cond, state = torch.randn(2, s1.cond_dim, generator=g), torch.randn(2, 13, generator=g)
    reasoning, noise = torch.randn(2, 4, s1.cond_dim, generator=g), torch.randn(2, 64, 13, generator=g)
    ref = s1.expert.sample(cond, state, noise=noise)
    out = s2.eval().expert.sample(cond, state, reasoning, torch.ones(2, 4, dtype=torch.bool), noise=noise)
    assert torch.equal(ref, out)


def test_stage1_expert_of_the_other_head_is_refused(tmp_path):
    """A stage-1 ScaleDP expert cannot start a UNet-head policy (or the reverse): it would load almost
    nothing, so init_from names the head and the missing action-network tensors."""
    from controller.policy.dexvla_init import InitFromError
    from controller.workspace.checkpoint import save_checkpoint

    s1, cfg = _policy(["policy.training_stage=1", "policy.expert.head=scaledp"])
    ckpt = save_checkpoint(str(tmp_path / "s1"), s1.eval(), cfg=cfg)
    with pytest.raises(InitFromError, match=r"action-network tensors .*expert\.model\.down.*policy\.expert\.head"):
        _policy([f"policy.init_from={ckpt}"])
