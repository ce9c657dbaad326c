"""The controller checkpoint shipped in ``assets/controller_small_sim`` (used by ``make demo``):
it loads with safe loaders only, its config is the ``small`` preset's, it fits the size budget
and it predicts a finite (64, 13) chunk from a raw observation. Skipped while none is shipped."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "assets" / "controller_small_sim"

pytestmark = pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(),
                                reason="no controller checkpoint shipped in assets/controller_small_sim yet")


def test_shipped_checkpoint_matches_the_small_preset():
    from omegaconf import OmegaConf

    from tests.controller.conftest import compose_cfg

    assert (SHIPPED / "model.safetensors").stat().st_size <= 50 * 2 ** 20
    assert not (SHIPPED / "training_state.pt").exists()  # deployment export, no pickled state
    shipped = OmegaConf.load(SHIPPED / "config.yaml")
    preset = compose_cfg(["policy=small", "task=sim_grasp"])
    assert shipped.image_size == preset.image_size == 112
    for key in ("n_layer", "n_head", "num_inference_steps", "mlp_ratio"):
        assert shipped.policy[key] == preset.policy[key], key
    for key in ("depth", "embed_dim", "num_heads", "model_type"):
        assert shipped.policy.obs_encoder.head[key] == preset.policy.obs_encoder.head[key], key
    assert shipped.policy.noise_scheduler.prediction_type == preset.policy.noise_scheduler.prediction_type
    meta = json.loads((SHIPPED / "meta.json").read_text())
    assert meta["weights"] == "ema" and len(meta["model_sha256"]) == 64


def test_shipped_checkpoint_predicts_a_chunk():
    import torch

    from controller.policy.chunk_runner import ChunkPolicy

    policy = ChunkPolicy.from_checkpoint(str(SHIPPED))
    rng = np.random.default_rng(0)
    rgbm = rng.integers(0, 256, (480, 640, 4), dtype=np.uint8)
    rgbm[..., 3] = 0
    rgbm[200:260, 300:360, 3] = 1
    obs = {"right_cam_img": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), "rgbm": rgbm,
           "right_state": np.concatenate([np.zeros(7), np.ones(6)]).astype(np.float32)}
    chunk = policy.predict_chunk(obs, noise=torch.zeros(64, 13))
    assert chunk.shape == (64, 13) and np.isfinite(chunk).all()
