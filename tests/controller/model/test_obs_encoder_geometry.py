"""Mask geometry features and the optional geometry branch of the observation encoder."""
from __future__ import annotations

import math

import torch

from controller.model.vision.obs_encoder import mask_geometry


def test_mask_geometry_of_a_rotated_bar_and_an_empty_mask():
    h, w = 56, 56
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    theta = math.radians(30)
    u = (xs - 0.2) * math.cos(theta) + (ys + 0.1) * math.sin(theta)     # along the bar
    v = -(xs - 0.2) * math.sin(theta) + (ys + 0.1) * math.cos(theta)    # across
    bar = ((u.abs() < 0.4) & (v.abs() < 0.08)).float()
    feats = mask_geometry(torch.stack([bar, torch.zeros(h, w)])[:, None])  # (2, 8)
    present, cx, cy, size, cos2, sin2, major, minor = feats[0].tolist()
    assert present == 1 and abs(cx - 0.2) < 0.03 and abs(cy + 0.1) < 0.03
    assert abs(cos2 - math.cos(2 * theta)) < 0.05 and abs(sin2 - math.sin(2 * theta)) < 0.05
    assert major > 3 * minor > 0 and size > 0
    assert torch.count_nonzero(feats[1]) == 0


def test_geometry_branch_starts_as_a_no_op_and_fine_tunes_from_a_checkpoint(make_policy, tmp_path):
    from controller.workspace.checkpoint import CheckpointError, load_policy_weights, save_checkpoint
    from tests.controller.conftest import random_obs

    plain, cfg = make_policy("tiny")
    path = save_checkpoint(str(tmp_path / "plain"), plain, cfg=cfg)
    geo, _ = make_policy("tiny", ["+policy.obs_encoder.mask_geometry=true"])
    try:
        load_policy_weights(geo, path)
        raise AssertionError("strict loading must refuse the missing geometry weights")
    except CheckpointError as exc:
        assert "mask_geometry_net" in str(exc)
    info = load_policy_weights(geo, path, allow_new_zero_init=True)
    assert info["new_zero_init"] and all(k.startswith("obs_encoder.mask_geometry_net.") for k in info["new_zero_init"])
    plain.eval(), geo.eval()
    obs = random_obs(2, int(cfg.image_size), seed=4)
    noise = torch.randn(2, plain.action_horizon, plain.action_dim, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(plain.predict_action(obs, noise=noise), geo.predict_action(obs, noise=noise), atol=1e-6)
    geo.train()
    batch = {"obs": obs, "action": torch.rand(2, plain.action_horizon, plain.action_dim)}
    geo.compute_loss(batch).backward()
    assert geo.obs_encoder.mask_geometry_net[3].weight.grad.abs().sum() > 0
