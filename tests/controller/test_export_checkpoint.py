"""``python -m controller.export_checkpoint``: EMA merged, deployment files only, same predictions."""
from __future__ import annotations

import json
import os

import pytest
import torch

from controller.export_checkpoint import export_checkpoint, main
from controller.model.diffusion.ema_model import EMAModel
from controller.policy.loading import load_policy
from controller.workspace.checkpoint import CheckpointError, save_checkpoint
from tests.controller.conftest import random_obs


@pytest.fixture
def make_training_checkpoint(make_policy, tmp_path):
    """Factory: a tiny training checkpoint (raw + EMA weights that differ) -> its directory."""
    def factory(with_ema: bool = True):
        policy, cfg = make_policy("tiny")
        ema = None
        if with_ema:
            ema = EMAModel(policy, power=0.75)
            with torch.no_grad():
                for p in policy.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            ema.step(policy)
            with torch.no_grad():  # raw weights move on: EMA and raw now differ
                for p in policy.parameters():
                    p.add_(0.05)
        return save_checkpoint(str(tmp_path / f"train_{with_ema}"), policy, cfg=cfg, ema=ema,
                               training_state={"global_step": 3})
    return factory


def _predict(ckpt, use_ema):
    policy, _ = load_policy(ckpt, use_ema=use_ema)
    size = policy.shape_meta["obs"]["rgbm"]["shape"][-1]
    noise = torch.randn(2, policy.action_horizon, policy.action_dim, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return policy.predict_action(random_obs(2, size, seed=3), noise=noise)


def test_export_merges_ema_and_predicts_like_the_ema_policy(make_training_checkpoint, tmp_path):
    src = make_training_checkpoint()
    dst = str(tmp_path / "shipped")
    meta = export_checkpoint(src, dst, note="test run")
    assert sorted(os.listdir(dst)) == ["config.yaml", "meta.json", "model.safetensors", "normalizer.json"]
    assert meta["weights"] == "ema" and meta["ema_tensors_merged"] > 0
    on_disk = json.loads(open(os.path.join(dst, "meta.json")).read())
    assert len(on_disk["model_sha256"]) == 64 and on_disk["note"] == "test run"
    exported = _predict(dst, use_ema=True)
    assert torch.allclose(exported, _predict(src, use_ema=True), atol=1e-6)
    assert not torch.allclose(exported, _predict(src, use_ema=False), atol=1e-3)


def test_export_raw_weights_and_errors(make_training_checkpoint, tmp_path):
    no_ema = make_training_checkpoint(with_ema=False)
    with pytest.raises(CheckpointError, match="without EMA"):
        export_checkpoint(no_ema, str(tmp_path / "x"))
    export_checkpoint(no_ema, str(tmp_path / "raw"), use_ema=False)
    assert torch.allclose(_predict(str(tmp_path / "raw"), True), _predict(no_ema, False), atol=1e-6)
    with pytest.raises(CheckpointError, match="max-mb"):
        export_checkpoint(no_ema, str(tmp_path / "y"), use_ema=False, max_mb=1e-3)
    assert main([str(tmp_path / "missing"), str(tmp_path / "z")]) == 2


def test_export_config_does_not_ask_to_resume(make_training_checkpoint, tmp_path):
    """A run that was resumed has ``training.resume: true`` in its config; the deployment checkpoint
    has no optimiser state, so its config must not ask to resume (the rest is kept as is)."""
    from omegaconf import OmegaConf
    src = make_training_checkpoint()
    cfg = OmegaConf.load(os.path.join(src, "config.yaml"))
    OmegaConf.update(cfg, "training.resume", True, force_add=True)
    OmegaConf.update(cfg, "training.resume_from", "somewhere/latest", force_add=True)
    OmegaConf.save(cfg, os.path.join(src, "config.yaml"))
    dst = str(tmp_path / "shipped")
    export_checkpoint(src, dst)
    out = OmegaConf.load(os.path.join(dst, "config.yaml"))
    assert out.training.resume is False and out.training.resume_from is None
    for key in ("policy", "shape_meta"):
        assert OmegaConf.to_container(out[key]) == OmegaConf.to_container(cfg[key])
