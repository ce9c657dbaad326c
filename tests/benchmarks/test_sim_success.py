"""The success-table benchmark runs both columns end to end (shipped controller, real simulator,
planner server over HTTP, GrabCut + flow tracker) and writes its JSON and Markdown."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CKPT = REPO / "assets" / "controller_small_sim"


@pytest.mark.skipif(not (CKPT / "config.yaml").exists(), reason="shipped checkpoint absent")
def test_one_episode_per_column_writes_table(tmp_path):
    os.environ.setdefault("MUJOCO_GL", "egl")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import sim_success
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    out = tmp_path / "table"
    assert sim_success.main(["--checkpoint", str(CKPT), "--episodes", "1", "--splits", "unseen_lighting",
                             "--time-limit", "1.5", "--out", str(out)]) == 0
    report = json.loads((out / "sim_success.json").read_text())
    row = report["rows"]["unseen_lighting"]
    for column in ("controller", "hierarchy"):
        assert row[column]["n"] == 1 and 0.0 <= row[column]["rate"] <= 1.0
        lo, hi = row[column]["wilson95"]
        assert 0.0 <= lo <= row[column]["rate"] <= hi <= 1.0
    rec = row["hierarchy"]["records"][0]
    assert "error" not in rec, rec
    assert rec["steps"] > 0 and 0.0 <= rec["mask_iou_first"] <= 1.0 and 0.0 <= rec["box_iou"] <= 1.0
    assert rec["box_iou"] > 0.5 and rec["mask_iou_first"] > 0.5  # the planner's box and GrabCut find the object
    md = (out / "sim_success.md").read_text()
    assert "| unseen_lighting |" in md and "Diagnostics of `hierarchy`" in md
