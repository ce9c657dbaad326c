"""``python -m controller.dataset.inspect``: report contents, flags and exit codes."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

from controller.dataset.inspect import inspect_store, main
from tests.controller.dataset.factories import make_episode
from controller.dataset.writer import write_episodes

REPO = Path(__file__).resolve().parents[3]


def test_cli_ok_store(grasp_zarr):
    proc = subprocess.run([sys.executable, "-m", "controller.dataset.inspect", grasp_zarr],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for text in ("zarr format: v2", "episodes: 4", "steps: 137", "length min: 5", "length max: 80",
                 "data/rgbm", "(137, 48, 64, 4)", "uint8", "(1, 48, 64, 4)", "blosc(lz4",
                 "meta/episode_ends", "per-dimension ranges", "dims [12] are constant"):
        assert text in out, (text, out)


def test_hard_error_exit_code(grasp_zarr, tmp_path, capsys):
    bad = tmp_path / "bad.zarr"
    shutil.copytree(grasp_zarr, bad)
    del zarr.open_group(str(bad), mode="r+")["data"]["action"]
    assert main([str(bad), grasp_zarr]) == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and "missing key 'data/action'" in out and "grasp_v2.zarr" in out
    assert main([str(tmp_path / "absent.zarr")]) == 1


def test_flags(tmp_path, capsys):
    eps = [make_episode(0, 1), make_episode(1, 6), make_episode(2, 5)]
    eps[1]["rgbm"][..., 3] = 0                   # target never masked in episode 1
    eps[2]["right_state"][2, 0] = 1.5            # arm outside [-1, 1]
    eps[2]["right_state"][3, 9] = -0.2           # hand outside [0, 1]
    eps[2]["rgbm"][0, 0, 0, 3] = 128             # an odd mask value
    path = write_episodes(tmp_path / "flags.zarr", eps)
    report = inspect_store(path, mask_frames=-1)
    text = "\n".join(report.warnings)
    assert not report.errors
    for frag in ("shorter than 2 steps: [0]", "mask channel is empty in 1 episode(s): [1]",
                 "arm dims [0] leave [-1, 1]", "hand dims [9] leave [0, 1]", "other than 0/1/255: [128]",
                 "'data/action' dims [12] are constant"):
        assert frag in text, (frag, text)
    assert main([path]) == 0 and main([path, "--strict"]) == 1
    capsys.readouterr()


def test_non_finite_is_an_error(grasp_zarr, tmp_path, capsys):
    bad = tmp_path / "nan.zarr"
    shutil.copytree(grasp_zarr, bad)
    arr = zarr.open_group(str(bad), mode="r+")["data"]["right_state"]
    vals = np.asarray(arr[...])
    vals[10, 2] = np.inf
    arr[...] = vals
    report = inspect_store(str(bad))
    assert any("'data/right_state' has 1 NaN/inf" in e for e in report.errors)
    assert main([str(bad)]) == 1
    assert "NaN/inf" in capsys.readouterr().out
