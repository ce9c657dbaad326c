"""One ViT for both cameras (``obs_encoder.share_backbone``): batched encoding, same function."""
from __future__ import annotations

import pytest
import torch

from controller.model.vision.obs_encoder import check_shareable, unshared_state_dict
from tests.controller.conftest import random_obs

SHARE = ["++policy.obs_encoder.share_backbone=true"]


def _pair(make_policy):
    """A shared-backbone policy and a two-backbone one holding the same weights in both ViTs."""
    shared, cfg = make_policy("tiny", SHARE)
    separate, _ = make_policy("tiny")
    separate.load_state_dict(unshared_state_dict(shared.state_dict(), "obs_encoder."), strict=True)
    return shared.eval(), separate.eval(), cfg


def test_shared_backbone_has_one_set_of_weights_and_the_same_actions(make_policy):
    shared, separate, cfg = _pair(make_policy)
    keys = shared.state_dict().keys()
    assert not any(k.startswith("obs_encoder.dino_wrist.") for k in keys)
    assert shared.obs_encoder.wrist_backbone is shared.obs_encoder.dino_head
    n_shared = sum(p.numel() for p in shared.parameters())
    n_sep = sum(p.numel() for p in separate.parameters())
    assert n_sep - n_shared == sum(p.numel() for p in separate.obs_encoder.dino_wrist.parameters()) > 0

    obs = random_obs(2, int(cfg.image_size), seed=3)
    calls = []
    hook = shared.obs_encoder.dino_head.patch_embed.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    noise = torch.randn(2, shared.action_horizon, shared.action_dim, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a_shared = shared.predict_action(obs, noise=noise)
        a_sep = separate.predict_action(obs, noise=noise)
    hook.remove()
    assert calls == [4]  # head and wrist of 2 observations, one backbone call
    assert torch.allclose(a_shared, a_sep, atol=1e-5), float((a_shared - a_sep).abs().max())


def test_shared_backbone_tokens_equal_the_one_by_one_path(make_policy):
    shared, _, cfg = _pair(make_policy)
    enc = shared.obs_encoder
    obs = random_obs(3, int(cfg.image_size), seed=5)
    with torch.no_grad():
        head, wrist = enc.shared_rgb_tokens(obs["rgbm"], obs["right_cam_img"], training=False)
        assert torch.allclose(head, enc.head_rgb_tokens(obs["rgbm"], False), atol=1e-5)
        assert torch.allclose(wrist, enc.wrist_rgb_tokens(obs["right_cam_img"], False), atol=1e-5)


def test_shared_backbone_trains_and_round_trips_a_checkpoint(make_policy, tmp_path):
    from controller.workspace.checkpoint import load_policy_weights, save_checkpoint
    shared, cfg = make_policy("tiny", SHARE)
    shared.train()
    obs = random_obs(2, int(cfg.image_size), seed=6)
    loss = shared.compute_loss({"obs": obs, "action": torch.rand(2, shared.action_horizon, shared.action_dim)})
    loss.backward()
    assert torch.isfinite(loss)
    path = save_checkpoint(str(tmp_path / "ckpt"), shared, cfg=cfg)
    again, _ = make_policy("tiny", SHARE)
    load_policy_weights(again, path)
    for k, v in shared.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_shared_backbone_refuses_different_camera_configs(make_policy):
    head = {"model_type": "dinov2_vitb14", "local_weights_path": "/w/b.pth", "frozen": True}
    check_shareable(head, dict(head))
    with pytest.raises(ValueError, match=r"model_type \(head 'dinov2_vitb14', wrist 'dinov2_vitl14'\)"):
        check_shareable(head, {**head, "model_type": "dinov2_vitl14"})
    with pytest.raises(ValueError, match=r"share_backbone=true .* differ in frozen"):
        make_policy("tiny", SHARE + ["policy.obs_encoder.wrist.frozen=false"])
