"""DexVLAPolicy, tiny preset (random tiny Qwen2-VL built offline + 2-block ScaleDP): inference,
determinism, losses and gradients, LM overfitting, checkpoint round trip, stage 1, the shape_meta
contract, and two training steps through the existing workspace."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import controller.policy.dexvla_policy  # noqa: F401 - registers DexVLAPolicy with the registry
from controller.common.registry import resolve_target
from controller.common.shape_meta import ShapeMetaError
from controller.policy.dexvla_policy import DexVLAPolicy
from tests.controller.conftest import build_policy, compose_cfg, fitted_normalizer, random_obs

B, SIZE, H, A = 2, 56, 64, 13


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster, and much faster on a shared, loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _policy(overrides=()):
    policy, cfg = build_policy("dexvla_tiny", overrides)
    policy.set_normalizer(fitted_normalizer())
    return policy, cfg


def _obs(seed=0):
    obs = random_obs(B, SIZE, seed)
    obs["language"] = ["grasp the red box", "grasp the blue cylinder"]
    return obs


def _batch(seed=0, reasoning=("approach the red box", "close the hand")):
    g = torch.Generator().manual_seed(seed)
    pad = torch.zeros(B, H, dtype=torch.bool)
    pad[1, 50:] = True
    batch = {"obs": _obs(seed), "action": torch.rand(B, H, A, generator=g) * 2 - 0.5, "action_is_pad": pad,
             "language": ["grasp the red box", "grasp the blue cylinder"]}
    if reasoning is not None:
        batch["reasoning"] = list(reasoning)
    return batch


def test_registered_as_a_policy_class():
    assert resolve_target("controller.policy.dexvla_policy.DexVLAPolicy", ("policy",)) is DexVLAPolicy


def test_predict_action_shapes_and_reasoning():
    policy, _ = _policy()
    out = policy.eval().predict_action(_obs())
    assert out["action"].shape == (B, H, A) and torch.isfinite(out["action"]).all()
    assert isinstance(out["reasoning"], list) and len(out["reasoning"]) == B
    assert all(isinstance(t, str) for t in out["reasoning"])


def test_deterministic_given_noise():
    policy, _ = _policy()
    policy.eval()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(B, H, A, generator=g)
    a, b = policy.predict_action(_obs(), noise=noise), policy.predict_action(_obs(), noise=noise.clone())
    assert torch.equal(a["action"], b["action"]) and a["reasoning"] == b["reasoning"]
    c = policy.predict_action(_obs(), noise=torch.randn(B, H, A, generator=g))
    assert not torch.equal(a["action"], c["action"])
    with pytest.raises(ValueError, match="noise must have shape"):
        policy.predict_action(_obs(), noise=noise[:, :10])


def test_compute_loss_and_gradients_reach_expert_and_projector():
    """adaLN-Zero: at init only the expert's final linear gets a gradient; after a few steps the
    gradient reaches the projector, the reasoning FiLM and the LM; the frozen ViT gets none."""
    torch.manual_seed(0)
    policy, _ = _policy()
    policy.train()
    opt = policy.get_optimizer(lr=1e-3, weight_decay=0.0)
    for _ in range(3):
        opt.zero_grad()
        loss = policy.compute_loss(_batch())
        assert torch.isfinite(loss) and loss.dim() == 0
        assert np.isfinite(policy.last_loss_terms["lm_loss"])
        loss.backward()
        opt.step()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}

    def reached(prefix):
        return any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix))

    for prefix in ("expert.model.blocks.", "expert.model.final_layer.", "expert.model.combine.", "prompt_proj.",
                   "expert.reasoning_film.", "backbone.model.model.language_model.", "backbone.model.lm_head."):
        assert reached(prefix), prefix
    assert all(p.grad is None for p in policy.backbone.model.model.visual.parameters())


def test_loss_without_reasoning_is_diffusion_only():
    policy, _ = _policy()
    loss = policy.compute_loss(_batch(reasoning=None))
    assert torch.isfinite(loss) and np.isnan(policy.last_loss_terms["lm_loss"])
    assert loss.item() == pytest.approx(policy.last_loss_terms["diffusion_loss"])


def test_lm_loss_decreases_when_overfitting_one_reasoning_string():
    torch.manual_seed(0)
    policy, _ = _policy()
    policy.train()
    opt = policy.get_optimizer(lr=3e-3, weight_decay=0.0)
    batch = _batch(reasoning=("approach the red box", "approach the red box"))
    lm = []
    for _ in range(30):
        opt.zero_grad()
        policy.compute_loss(batch).backward()
        lm.append(policy.last_loss_terms["lm_loss"])
        opt.step()
    assert lm[-1] < 0.25 * lm[0], lm


def test_checkpoint_round_trip_gives_identical_actions(tmp_path):
    from controller.policy.loading import load_policy
    from controller.workspace.checkpoint import save_checkpoint

    policy, cfg = _policy()
    opt = policy.get_optimizer(lr=1e-3, weight_decay=0.0)
    for _ in range(2):  # move the zero-initialised layers so the round trip is not trivially zeros
        opt.zero_grad()
        policy.compute_loss(_batch()).backward()
        opt.step()
    policy.eval()
    ckpt = save_checkpoint(str(tmp_path / "ckpt"), policy, cfg=cfg)
    loaded, _ = load_policy(ckpt)
    assert isinstance(loaded, DexVLAPolicy) and not loaded.training
    noise = torch.randn(B, H, A, generator=torch.Generator().manual_seed(2))
    a, b = policy.predict_action(_obs(), noise=noise), loaded.predict_action(_obs(), noise=noise)
    assert torch.equal(a["action"], b["action"]) and a["reasoning"] == b["reasoning"]
    assert a["action"].abs().sum() > 0


def test_stage1_expert_alone_and_weights_carry_to_stage2():
    s1, _ = _policy(["policy.training_stage=1"])
    assert s1.backbone is None and s1.cond_dim == 64
    assert not any(k.startswith("backbone.") for k in s1.state_dict())
    out = s1.eval().predict_action(_obs())
    assert out["action"].shape == (B, H, A) and out["reasoning"] == ["", ""]
    s1.train()
    loss = s1.compute_loss(_batch())
    assert torch.isfinite(loss) and np.isnan(s1.last_loss_terms["lm_loss"])
    loss.backward()
    assert s1.stage1_encoder.proj.weight.grad is not None
    s2, _ = _policy()
    s2.expert.load_state_dict(s1.expert.state_dict())   # same expert shapes in stages 1 and 2
    zeros, _ = _policy(["policy.training_stage=1", "policy.stage1_condition=zeros"])
    assert zeros.stage1_encoder is None and torch.isfinite(zeros.compute_loss(_batch()))


def test_shape_meta_is_checked():
    policy, cfg = _policy()
    with pytest.raises(ShapeMetaError):
        policy.predict_action(random_obs(B, 48))                    # 48 px images, preset says 56
    bad = OmegaConf.to_container(cfg.shape_meta, resolve=True)
    bad["obs"]["right_state"]["shape"] = [12]
    with pytest.raises(ShapeMetaError):
        DexVLAPolicy(shape_meta=bad, backbone={"preset": "tiny"}, expert={"depth": 1, "width": 32, "num_heads": 2})
    with pytest.raises(ValueError, match="lora_rank"):
        _policy(["policy.lora_rank=-1"])
    with pytest.raises(ValueError, match="lora_target_modules"):
        _policy(["policy.lora_rank=4", "policy.lora_target_modules=[not.a.name]"])


def test_the_2b_presets_require_a_model_path():
    for preset in ("dexvla", "dexvla_l"):
        cfg = compose_cfg([f"policy={preset}"])
        assert OmegaConf.is_missing(cfg.policy.backbone, "model_path")
        assert cfg.policy.expert.size == {"dexvla": "H", "dexvla_l": "L"}[preset]


def test_two_training_steps_through_the_workspace(tmp_path):
    """train.py's workspace with policy=dexvla_tiny task=sim_grasp on a store with text."""
    from controller.dataset.writer import ZarrEpisodeWriter
    from controller.workspace.train_workspace import TrainDexGraspVLAControllerWorkspace
    from tests.controller.dataset.factories import make_episode

    store = tmp_path / "sim_grasp.zarr"
    rng = np.random.default_rng(0)
    with ZarrEpisodeWriter(store, zarr_format=2) as w:
        for i, n in enumerate((12, 10)):
            w.add_episode(make_episode(i, n, (48, 64), rng, 1), language="grasp the red box",
                          reasoning=["approach"] * (n // 2) + ["lift"] * (n - n // 2))
    cfg = compose_cfg(["policy=dexvla_tiny", "task=sim_grasp", f"task.dataset_paths=[{store}]",
                       "logging.mode=disabled", "training.num_epochs=1", "training.max_train_steps=2",
                       "training.max_val_steps=1", "task.dataset.val_ratio=0.5", "n_action_steps=16"])
    workspace = TrainDexGraspVLAControllerWorkspace(cfg, output_dir=str(tmp_path / "run"))
    metrics = workspace.run()
    assert np.isfinite(metrics["train_loss"]) and workspace.global_step == 2
    assert np.isfinite(workspace.policy.last_loss_terms["lm_loss"])   # the batches carried reasoning
    assert (tmp_path / "run" / "checkpoints" / "latest" / "model.safetensors").is_file()


def test_gradient_checkpointing_gives_the_same_gradients():
    """``policy.gradient_checkpointing=true`` recomputes ScaleDP-block and Qwen2-VL-layer activations in
    backward: loss and every gradient equal the plain run (same weights, same noise draw)."""
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        policy, _ = _policy([f"+policy.gradient_checkpointing={str(flag).lower()}"])
        with torch.no_grad():  # move adaLN-Zero's zero layers off zero so every block gets a gradient
            g = torch.Generator().manual_seed(1)
            for n, p in policy.named_parameters():
                if "adaLN_modulation" in n or "final_layer.linear" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        assert policy.expert.model.gradient_checkpointing is flag
        m = policy.backbone.model
        assert (m.is_activation_checkpointing if hasattr(m, "is_activation_checkpointing")
                else m.is_gradient_checkpointing) is flag
        policy.train()
        torch.manual_seed(123)
        loss = policy.compute_loss(_batch())
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    assert l0 == pytest.approx(l1, rel=1e-6, abs=1e-7)
    assert g0.keys() == g1.keys() and any(k.startswith("expert.model.blocks.") for k in g0)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6, msg=k)
