"""Test helper (issue 23): a tiny random DexVLA checkpoint written with ``save_checkpoint``."""
from __future__ import annotations

from pathlib import Path


REASONING = "move above the box"


def make_tiny_dexvla_checkpoint(directory: str | Path, steps: int = 15) -> str:
    """Build ``policy=dexvla_tiny`` (random tiny Qwen2-VL + 2-block ScaleDP, fitted action normaliser),
    nudge the zero-initialised output layers off zero so the actions are not all equal, teach the
    language model :data:`REASONING` in ``steps`` steps, and save it as a checkpoint directory;
    returns its path."""
    import torch

    from controller.workspace.checkpoint import save_checkpoint
    from tests.controller.conftest import build_policy, fitted_normalizer

    from tests.controller.conftest import random_obs

    policy, cfg = build_policy("dexvla_tiny")
    policy.set_normalizer(fitted_normalizer())
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in policy.expert.named_parameters():
            if "final_layer" in name or "adaLN" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    # a few LM steps on one reasoning string, so that generation yields readable text (not empty)
    batch = {"obs": random_obs(2, 56, 0), "action": torch.zeros(2, 64, 13), "language": ["grasp the box"] * 2,
             "reasoning": [REASONING] * 2}
    opt = torch.optim.Adam([p for n, p in policy.named_parameters() if n.startswith("backbone.")
                            and p.requires_grad], lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        policy.compute_loss(batch).backward()
        opt.step()
    return save_checkpoint(str(Path(directory) / "dexvla_tiny"), policy.eval(), cfg=cfg)


def write_text_store(path) -> str:
    """A 2-episode zarr store (12 + 10 steps, 48 x 64 frames) with an instruction per episode and a
    reasoning string per step ('approach' then 'lift'): training data for the DexVLA tests."""
    import numpy as np

    from controller.dataset.writer import ZarrEpisodeWriter
    from tests.controller.dataset.factories import make_episode
    rng = np.random.default_rng(0)
    with ZarrEpisodeWriter(path, zarr_format=2) as w:
        for i, n in enumerate((12, 10)):
            w.add_episode(make_episode(i, n, (48, 64), rng, 1), language="grasp the red box",
                          reasoning=["approach"] * (n // 2) + ["lift"] * (n - n // 2))
    return str(path)
