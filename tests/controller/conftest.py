"""Factories shared by the controller tests (tiny models, generated zarr stores, configs)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = str(REPO / "controller" / "config")


def compose_cfg(overrides=()):
    """Compose the training config with Hydra overrides (no run directory, no side effects)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="train_dexgraspvla_controller_workspace", overrides=list(overrides))


def build_policy(preset: str = "tiny", overrides=()):
    torch.manual_seed(0)
    cfg = compose_cfg([f"policy={preset}", *overrides])
    from controller.common.registry import instantiate
    return instantiate(cfg.policy, trusted=True), cfg


def fitted_normalizer(seed: int = 0):
    from controller.model.common.normalizer import LinearNormalizer
    g = torch.Generator().manual_seed(seed)
    nz = LinearNormalizer()
    nz.fit({"action": torch.rand(200, 13, generator=g) * 2 - 0.5})
    return nz


def random_obs(batch: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rgbm = torch.rand(batch, 1, 4, size, size, generator=g)
    rgbm[:, :, 3] = (rgbm[:, :, 3] > 0.7).float()
    return {"rgbm": rgbm, "right_cam_img": torch.rand(batch, 1, 3, size, size, generator=g),
            "right_state": torch.rand(batch, 1, 13, generator=g) * 2 - 1}


@pytest.fixture
def make_policy():
    """Factory: ``make_policy(preset='tiny', overrides=())`` -> (policy with a fitted normaliser, cfg)."""
    def factory(preset: str = "tiny", overrides=()):
        policy, cfg = build_policy(preset, overrides)
        policy.set_normalizer(fitted_normalizer())
        return policy, cfg
    return factory


@pytest.fixture
def make_zarr(tmp_path_factory):
    """Factory: ``make_zarr(episode_lengths=..., zarr_format=2)`` -> path of a reference-layout store."""
    from tests.controller.dataset.factories import make_grasp_zarr

    def factory(episode_lengths=(20, 30, 25, 15), hw=(48, 64), zarr_format=2, seed=0):
        path = tmp_path_factory.mktemp("zarr") / "data.zarr"
        return make_grasp_zarr(str(path), episode_lengths=episode_lengths, hw=hw, zarr_format=zarr_format, seed=seed)
    return factory


def run_cli(args, cwd=None, env=None, timeout=600):
    """Run a command with the test interpreter; returns CompletedProcess (check=False)."""
    full_env = dict(os.environ)
    full_env.update({"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    full_env.update(env or {})
    cmd = [sys.executable, *args] if not str(args[0]).endswith(".sh") else list(args)
    return subprocess.run(cmd, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
