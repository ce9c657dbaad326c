"""The success-table benchmark runs both columns end to end (shipped controller, real simulator,
planner server over HTTP, GrabCut + flow tracker) and writes its JSON and Markdown."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CKPT = REPO / "assets" / "controller_small_sim"


@pytest.mark.skipif(not (CKPT / "config.yaml").exists(), reason="shipped checkpoint absent")
def test_one_episode_per_column_writes_table(tmp_path, sim_success):
    out = tmp_path / "table"
    import cv2
    import torch
    threads = (torch.get_num_threads(), cv2.getNumThreads())
    try:  # --threads sets this process's torch/OpenCV threads (as one of several evaluation processes)
        assert sim_success.main(["--checkpoint", str(CKPT), "--episodes", "1", "--splits", "unseen_lighting",
                                 "--time-limit", "1.5", "--threads", "1", "--out", str(out)]) == 0
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
    report = json.loads((out / "sim_success.json").read_text())
    row = report["rows"]["unseen_lighting"]
    for column in ("controller", "hierarchy"):
        assert row[column]["n"] == 1 and 0.0 <= row[column]["rate"] <= 1.0
        lo, hi = row[column]["wilson95"]
        assert 0.0 <= lo <= row[column]["rate"] <= hi <= 1.0
    from controller.policy import defaults
    for column in ("controller", "hierarchy"):  # the deployment defaults are what is measured
        assert row[column]["num_samples"] == defaults.NUM_SAMPLES
        assert row[column]["temporal_ensemble"] == defaults.TEMPORAL_ENSEMBLE_DECAY
        assert row[column]["threads"] == 1
    assert [r["seed"] for r in row["controller"]["records"]] == [100000]
    rec = row["hierarchy"]["records"][0]
    assert "error" not in rec, rec
    assert rec["steps"] > 0 and 0.0 <= rec["mask_iou_first"] <= 1.0 and 0.0 <= rec["box_iou"] <= 1.0
    assert rec["box_iou"] > 0.5 and rec["mask_iou_first"] > 0.5  # the planner's box and GrabCut find the object
    md = (out / "sim_success.md").read_text()
    assert "| unseen_lighting |" in md and "Diagnostics of `hierarchy`" in md


def test_merge_combines_column_runs(tmp_path, sim_success):
    """Columns run as separate processes are combined into one table; overlaps are refused."""
    mod = sim_success

    def stats(k, n):
        return {"successes": k, "n": n, "rate": k / n, "wilson95": [0.1, 0.9], "s_per_attempt": 5.0,
                "mean_box_iou": 0.9, "mean_mask_iou": 0.8, "designated_chosen": 1}

    for name, rows in (("a", {"train": {"controller": stats(4, 5)}, "unseen_lighting": {"controller": stats(3, 5)}}),
                       ("b", {"unseen_lighting": {"hierarchy": stats(2, 5)}})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "sim_success.json").write_text(json.dumps({"checkpoint": "ck", "episodes": 5, "rows": rows}))
    assert mod.main(["--merge", str(tmp_path / "b"), str(tmp_path / "a"), "--out", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "sim_success.json").read_text())
    assert list(merged["rows"]) == ["train", "unseen_lighting"]
    assert set(merged["rows"]["unseen_lighting"]) == {"controller", "hierarchy"}
    md = (tmp_path / "m" / "sim_success.md").read_text()
    assert "| train | 80.0 %" in md and "| unseen_lighting | 60.0 %" in md and "40.0 %" in md
    assert mod.main(["--merge", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "x")]) == 2
    assert mod.main(["--merge", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2


def test_merge_pools_disjoint_seed_ranges(tmp_path, sim_success):
    """The same split and column run on two seed ranges become one column of the pooled episodes
    (rates and Wilson intervals recomputed from the records); a seed in both is refused."""
    mod = sim_success

    def stats(seeds, wins):
        recs = [{"seed": s, "success": s in wins} for s in seeds]
        k = sum(r["success"] for r in recs)
        return {"successes": k, "n": len(recs), "rate": k / len(recs), "wilson95": [0.0, 1.0], "s_per_attempt": 4.0,
                "records": recs}

    for name, seeds, wins in (("a", range(0, 50), set(range(0, 40))), ("b", range(50, 100), set(range(50, 95))),
                              ("c", range(90, 95), set())):
        (tmp_path / name).mkdir()
        report = {"checkpoint": "ck", "episodes": len(seeds), "rows": {"train": {"controller": stats(seeds, wins)}}}
        (tmp_path / name / "sim_success.json").write_text(json.dumps(report))
    assert mod.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 0
    pooled = json.loads((tmp_path / "m" / "sim_success.json").read_text())["rows"]["train"]["controller"]
    assert (pooled["successes"], pooled["n"]) == (85, 100) and pooled["rate"] == 0.85
    lo, hi = pooled["wilson95"]
    assert 0.76 < lo < 0.78 and 0.90 < hi < 0.92          # Wilson 95 % of 85/100: 0.767-0.907
    assert len(pooled["records"]) == 100
    assert mod.main(["--merge", str(tmp_path / "b"), str(tmp_path / "c"), "--out", str(tmp_path / "x")]) == 2
