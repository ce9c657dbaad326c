"""`make demo`'s script at minimum size: offline planner server + simulated robot, one object,
planner mode to the end; checks the exit code, the printed summary and the files it points to."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("mujoco")


def test_demo_script_minimal(tmp_path):
    env = dict(os.environ, DEMO_LOG_ROOT=str(tmp_path / "logs"), MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("the demo script runs with the project's .venv (created by make)")
    res = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "sim.seed=2", "sim.n_objects=[1,1]",
                          "loop.max_attempts=2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "DexGraspVLA run: completed" in out and "grasped" in out
    runs = [p for p in (tmp_path / "logs").iterdir() if (p / "summary.json").is_file()]
    assert len(runs) == 1, out[-2000:]
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["outcomes"], summary
    assert summary["outcomes"][0]["success"] is True
    assert (runs[0] / "run.log").stat().st_size > 0
    assert any((runs[0] / "images").glob("*box*.png"))
    assert (runs[0] / "planner" / "planner_log.jsonl").is_file()
