"""Attention-map figures: data preparation (numbers) and the command line (files)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from controller.viz import attention as viz
from controller.viz.attention_io import load_attention_maps, save_attention_maps

from .conftest import make_maps

REPO = Path(__file__).resolve().parents[3]
HEAD_PEAK, WRIST_PEAK = (5, 11), (9, 2)


@pytest.fixture
def maps(tmp_path):
    return load_attention_maps(save_attention_maps(tmp_path / "m.npz", **make_maps(
        head_peak=HEAD_PEAK, wrist_peak=WRIST_PEAK)))


def test_select_indices():
    sel = viz.select_indices
    assert viz.default_steps(16) == [0, 7, 15] and viz.default_steps(1) == [0]
    assert viz.default_steps(2) == [0, 1]
    assert sel(None, 16, "steps", [0, 7, 15]) == [0, 7, 15]
    assert sel("all", 4, "blocks", []) == [0, 1, 2, 3]
    assert sel("::2", 12, "blocks", []) == [0, 2, 4, 6, 8, 10]
    assert sel("first, last,-2", 16, "steps", []) == [0, 14, 15]
    assert sel("middle", 16, "steps", []) == [7]
    with pytest.raises(ValueError, match=r"--steps: index 16 out of range.*16 steps"):
        sel("0,16", 16, "steps", [])
    with pytest.raises(ValueError, match="--blocks: cannot parse"):
        sel("every other", 12, "blocks", [])
    with pytest.raises(ValueError, match="selects nothing"):
        sel("5:5", 12, "blocks", [])


def test_overview_data_puts_the_peak_at_the_right_grid_cell(maps):
    data = viz.prepare_overview(maps, sample=1, steps=[0, 2], blocks=[1, 3])
    assert data.head.shape == (2, 2, 16, 16)
    assert data.wrist.shape == (2, 2, 12, 10)           # non-square grid, rows x cols
    assert data.mass.shape == (2, 2, 4) and data.timesteps == [45, 0]
    for grids, peak in ((data.head, HEAD_PEAK), (data.wrist, WRIST_PEAK)):
        for r in range(2):
            for c in range(2):
                assert np.unravel_index(np.argmax(grids[r, c]), grids[r, c].shape) == peak
    np.testing.assert_allclose(data.mass.sum(-1), 1.0, atol=5e-3)
    assert data.vmax == pytest.approx(max(data.head.max(), data.wrist.max()))
    # the numbers are the head-average of the raw maps, tokens row-major over the grid
    raw = maps.attn[2, 3, 1].astype(np.float32).mean(0)
    np.testing.assert_allclose(data.head[1, 1].reshape(-1), raw[:256], rtol=1e-6)
    np.testing.assert_allclose(data.wrist[1, 1][WRIST_PEAK], raw[256 + 9 * 10 + 2], rtol=1e-6)
    np.testing.assert_allclose(data.mass[1, 1, 2:], raw[-2:], rtol=1e-6)


def test_image_data_upsamples_the_peak_onto_the_image(maps):
    data = viz.prepare_images(maps, sample=0, step=-1)
    assert data.step == 2 and data.timestep == 0
    assert data.head_rgb.shape == (112, 112, 3) and data.wrist_up.shape == (120, 100)
    # BGR -> RGB: the synthetic file stores B = x gradient, G = y gradient, R = 90
    assert (data.head_rgb[..., 0] == 90).all()
    np.testing.assert_array_equal(data.head_rgb[..., 2], maps.rgbm[0, ..., 0])
    np.testing.assert_array_equal(data.wrist_rgb, maps.right_cam_img[0, ..., ::-1])
    assert data.mask.dtype == bool and data.mask.any()
    for up, grid, peak in ((data.head_up, (16, 16), HEAD_PEAK),
                           (data.wrist_up, (12, 10), WRIST_PEAK)):
        y, x = np.unravel_index(np.argmax(up), up.shape)
        cell_h, cell_w = up.shape[0] / grid[0], up.shape[1] / grid[1]
        assert int(y // cell_h) == peak[0] and int(x // cell_w) == peak[1]
    norm = viz._norm(data.vmax, log=False)
    over = viz.overlay_heat(data.head_rgb, data.head_up, norm)
    assert over.shape == data.head_rgb.shape and over.dtype == np.uint8


def test_per_head_data(maps):
    data = viz.prepare_per_head(maps, sample=0, step=0, blocks=[0, 2])
    assert data.head.shape == (2, 2, 16, 16) and data.wrist.shape == (2, 2, 12, 10)
    np.testing.assert_allclose(data.head[1, 1].reshape(-1),
                               maps.attn[0, 2, 0, 1, :256].astype(np.float32))
    with pytest.raises(ValueError, match="--sample"):
        viz.prepare_per_head(maps, sample=2)


def _pngs(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in d.glob("*.png")}


def test_cli_writes_overview_and_image_figures(attn_dir, capsys):
    assert viz.main(["--attn-maps-dir", str(attn_dir), "--quiet"]) == 0
    out = attn_dir / "visualizations"
    files = _pngs(out)
    assert set(files) == {f"{stem}_sample0_{kind}.png"
                          for stem in ("epoch_2_step_10", "epoch_10_step_20")
                          for kind in ("overview", "images")}
    assert all(size > 20_000 for size in files.values()), files


def test_cli_per_head_and_subsets(attn_dir, tmp_path):
    (attn_dir / "epoch_10_step_20.npz").unlink()
    out = tmp_path / "figs"
    argv = ["--attn-maps-dir", str(attn_dir), "--out-dir", str(out), "--per-head",
            "--per-head-step", "0", "--steps", "last", "--blocks", "::2", "--sample", "-1",
            "--quiet", "--dpi", "60", "--log-scale"]
    assert viz.main(argv) == 0
    files = _pngs(out)
    assert len(files) == 5                                # overview, images, 3 per-head
    for part in ("head", "wrist", "mass"):
        assert files[f"epoch_2_step_10_sample1_perhead_step0_{part}.png"] > 5_000


def test_cli_errors(tmp_path, attn_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert viz.main(["--attn-maps-dir", str(empty)]) == 2
    assert "no .npz attention-map files" in capsys.readouterr().err
    assert viz.main(["--attn-maps-dir", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err

    (attn_dir / "broken.npz").write_bytes(b"\x00" * 100)
    assert viz.main(["--attn-maps-dir", str(attn_dir), "--quiet", "--blocks", "0",
                     "--dpi", "40"]) == 1
    err = capsys.readouterr().err
    assert "broken.npz" in err and "cannot read" in err
    assert len(_pngs(attn_dir / "visualizations")) == 4     # the good files were still drawn

    (attn_dir / "broken.npz").unlink()
    assert viz.main(["--attn-maps-dir", str(attn_dir), "--sample", "5", "--quiet"]) == 1
    assert "--sample: index 5 out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        viz.main(["--attn-maps-dir", str(attn_dir), "--steps", "some"])


def test_script_runs_as_a_subprocess(attn_dir, tmp_path):
    (attn_dir / "epoch_10_step_20.npz").unlink()
    env = dict(os.environ, MPLBACKEND="Agg")
    out = tmp_path / "sub"
    proc = subprocess.run([sys.executable, str(REPO / "attention_map_visualizer.py"),
                           "--attn-maps-dir", str(attn_dir), "--out-dir", str(out),
                           "--blocks", "0", "--sample", "all", "--dpi", "50"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 4 PNG(s) for 1 file(s)" in proc.stderr
    assert sorted(_pngs(out)) == [f"epoch_2_step_10_sample{b}_{kind}.png" for b in (0, 1)
                                  for kind in ("images", "overview")]
