"""``sim.make_gif``: frame composition and GIF writing on synthetic inputs (no simulator, no torch)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sim import make_gif as mg


def _frame(step: int, success: bool = False) -> mg.StepFrame:
    rng = np.random.default_rng(step)
    head = np.full((480, 640, 3), 90, np.uint8)
    head[200:300, 250:350] = (0, 0, 200)
    wrist = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    mask = np.zeros((480, 640), bool)
    mask[200:300, 250:350] = True
    chunk = np.concatenate([np.sin(np.linspace(0, 3, 64))[:, None] * np.linspace(-0.8, 0.8, 7)[None],
                            np.linspace(1, 0, 64)[:, None].repeat(6, axis=1)], axis=1)
    return mg.StepFrame(head, wrist, mask, [240, 190, 360, 310], chunk, step % 6, step, step / 20, success)


def test_compose_frame_has_the_panels_size():
    meta = mg.EpisodeMeta(prompt="clear the table", instruction="grasp the red cube", seed=3, max_steps=300)
    rgb = mg.compose_frame(_frame(4), meta)
    assert rgb.dtype == np.uint8
    assert rgb.shape == (mg.CAPTION_H + mg.PANEL_H + mg.PLOT_H, 2 * mg.PANEL_W, 3)
    # the planner's box is drawn in yellow (RGB ~ (255, 230, 0)) on the head panel
    head = rgb[mg.CAPTION_H:mg.CAPTION_H + mg.PANEL_H, :mg.PANEL_W].astype(int)
    yellow = (head[..., 0] > 200) & (head[..., 1] > 180) & (head[..., 2] < 80)
    assert yellow.sum() > 100


def test_write_gif_is_a_valid_looping_gif(tmp_path):
    from PIL import Image
    meta = mg.EpisodeMeta(prompt="clear the table", instruction="grasp the red cube", seed=3, max_steps=300)
    frames = [mg.compose_frame(_frame(i, success=i >= 4), meta) for i in range(6)]
    out = tmp_path / "sub" / "ep.gif"
    stats = mg.write_gif(frames, out, fps=10, hold_last_s=0.2)
    assert out.read_bytes()[:6] == b"GIF89a"
    assert stats["bytes"] == out.stat().st_size
    with Image.open(out) as im:
        assert im.format == "GIF"
        assert im.size == (2 * mg.PANEL_W, mg.CAPTION_H + mg.PANEL_H + mg.PLOT_H)
        assert im.n_frames == stats["frames"] == 6
        assert im.info.get("loop") == 0
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
    assert durations == [100] * 5 + [300]
    assert stats["duration_s"] == pytest.approx(0.8)


def test_write_gif_shrinks_to_the_size_limit(tmp_path):
    meta = mg.EpisodeMeta(prompt="p", seed=0)
    frames = [mg.compose_frame(_frame(i), meta) for i in range(3)]  # random wrist images: big frames
    stats = mg.write_gif(frames, tmp_path / "small.gif", fps=10, max_bytes=150_000, hold_last_s=0)
    assert stats["bytes"] <= 150_000
    assert stats["size"][0] < 2 * mg.PANEL_W
    with pytest.raises(ValueError):
        mg.write_gif([], tmp_path / "none.gif")


def test_help_is_fast_and_imports_no_torch_or_mujoco():
    code = ("import sys; from sim import make_gif\n"
            "try:\n    make_gif.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('torch', 'mujoco') if m in sys.modules]\n"
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--max-steps" in r.stdout and "--controller" in r.stdout
