"""`make demo`'s script at minimum size: offline planner server + simulated robot, one object,
planner mode to the end; checks the exit code, the printed summary and the files it points to."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("mujoco")


SHIPPED = REPO / "assets" / "controller_small_sim"


def _run_demo(tmp_path, mode, *overrides):
    env = dict(os.environ, DEMO_LOG_ROOT=str(tmp_path / "logs"), MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"),
               DEMO_CONTROLLER=mode)
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("the demo script runs with the project's .venv (created by make)")
    res = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "sim.seed=2", "sim.n_objects=[1,1]", *overrides],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "grasped" in out
    runs = [p for p in (tmp_path / "logs").iterdir() if (p / "summary.json").is_file()]
    assert len(runs) == 1, out[-2000:]
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["outcomes"], summary
    assert (runs[0] / "run.log").stat().st_size > 0
    assert any((runs[0] / "images").glob("*box*.png"))
    assert (runs[0] / "planner" / "planner_log.jsonl").is_file()
    videos = list((runs[0] / "deployment").glob("*.mp4"))
    assert videos and all(v.stat().st_size > 0 for v in videos), out[-2000:]
    assert "videos (wrist | head | mask)" in out
    return out, summary, runs[0]


def test_demo_script_minimal_with_the_expert(tmp_path):
    """The whole pipeline with the scripted expert as the low level: the object is grasped."""
    out, summary, _ = _run_demo(tmp_path, "expert", "loop.max_attempts=2")
    assert "DexGraspVLA run: completed" in out and "scripted expert" in out
    assert summary["status"] == "completed" and summary["outcomes"][0]["success"] is True


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="no controller checkpoint shipped")
def test_demo_script_minimal_with_the_shipped_controller(tmp_path):
    """The demo's default path with the shipped diffusion controller, cut to a few chunks; run twice,
    it executes exactly the same actions (scene, planner and diffusion noise are seeded)."""
    args = ("auto", "loop.max_attempts=1", "loop.max_chunks_per_attempt=3")
    out, summary, run = _run_demo(tmp_path / "a", *args)
    assert "diffusion controller from assets/controller_small_sim" in out
    assert "DexGraspVLA run:" in out and len(summary["outcomes"]) == 1
    _, _, again = _run_demo(tmp_path / "b", *args)

    def actions(run_dir):
        files = sorted((run_dir / "deployment").glob("*.hdf5"))
        assert files, f"no deployment HDF5 under {run_dir}"
        with h5py.File(files[0], "r") as f:
            return f["action"][:]

    first, second = actions(run), actions(again)
    assert first.shape == second.shape and first.shape[0] > 0
    np.testing.assert_array_equal(first, second)
