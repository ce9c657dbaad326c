"""The long-horizon column (issue 24): failure causes from ground truth, and ``sim_success --columns
clear_table`` end to end (shipped controller through the runtime, planner server, 1 short episode
per split): counts present, causes sum to the failed episodes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sim.long_horizon import CAUSES, attempt_cause, episode_summary

REPO = Path(__file__).resolve().parents[2]
CKPT = REPO / "assets" / "controller_small_sim"


def _outcome(success, target, max_lift, start, end, end_lift, closed=True, failure_cause=None):
    return {"success": success, "failure_cause": failure_cause, "duration_s": 1.0,
            "recovery": [{"to": "approach"}] + ([{"to": "grasp"}] if closed else []),
            "sim_truth": {"target": target, "max_lift": max_lift, "start_pos": start, "end_pos": end,
                          "end_lift": end_lift}}


def test_attempt_causes_follow_the_definitions():
    still = [[0.0, 0.0, 0.02], [0.2, 0.0, 0.02]]
    assert attempt_cause(_outcome(True, 0, [0.2, 0], still, still, [0.2, 0])) is None
    assert attempt_cause(_outcome(False, 0, [0.0, 0.1], still, still, [0, 0.1])) == "wrong_object"
    assert attempt_cause(_outcome(False, 0, [0.1, 0.0], still, still, [0.0, 0])) == "dropped"
    assert attempt_cause(_outcome(False, 0, [0.1, 0.0], still, still, [0.1, 0])) == "refused"
    rolled = [[0.07, 0.0, 0.02], [0.2, 0.0, 0.02]]
    assert attempt_cause(_outcome(False, 0, [0.01, 0.0], still, rolled, [0, 0])) == "rolled_away"
    assert attempt_cause(_outcome(False, 0, [0.01, 0.0], still, still, [0, 0])) == "missed"
    assert attempt_cause(_outcome(False, 0, [0.0, 0.0], still, still, [0, 0], closed=False)) == "timeout"
    assert attempt_cause({"success": False, "sim_truth": None}) == "timeout"
    # verified by the planner but the target never rose: a failure (the verifier accepted a miss)
    assert attempt_cause(_outcome(True, 0, [0.01, 0.0], still, still, [0, 0])) == "missed"


def test_episode_summary_counts_cleared_objects():
    start = [[0.0, 0.0, 0.02], [0.2, 0.0, 0.02]]
    carried = _outcome(True, 0, [0.17, 0.0], start, start, [0.17, 0.0])
    missed = _outcome(False, 1, [0.0, 0.01], start, start, [0.0, 0.0])
    final = {"pos": [[3.0, 0.0, -50.0], [0.2, 0.0, 0.02]]}
    rec = episode_summary({"outcomes": [carried, missed], "sim_final": final, "status": "max_attempts"})
    assert (rec["asked"], rec["cleared"], rec["full_success"], rec["attempts"], rec["verified"]) == (2, 1, False, 2, 1)
    assert rec["cause"] == "missed" and rec["attempt_causes"] == ["missed"]
    final["pos"][1] = [3.0, 0.1, -40.0]  # knocked off the table, never carried: not cleared
    rec = episode_summary({"outcomes": [carried, missed], "sim_final": final})
    assert rec["cleared"] == 1 and not rec["full_success"]


@pytest.mark.skipif(not (CKPT / "config.yaml").exists(), reason="shipped checkpoint absent")
def test_clear_table_column_one_short_episode_per_split(tmp_path, sim_success):
    out = tmp_path / "table"
    splits = ["train", "unseen_objects", "unseen_backgrounds", "unseen_lighting"]
    assert sim_success.main(["--checkpoint", str(CKPT), "--columns", "clear_table", "--episodes", "1",
                             "--splits", *splits, "--lh-objects", "4", "4", "--lh-max-attempts", "1",
                             "--time-limit", "1.0", "--num-samples", "1", "--threads", "1",
                             "--out", str(out)]) == 0
    report = json.loads((out / "sim_success.json").read_text())
    for split in splits:
        c = report["rows"][split]["clear_table"]
        assert c["n"] == 1 and c["objects_asked"] == 4 and 0 <= c["objects_cleared"] <= 4
        rec = c["records"][0]
        assert rec["error"] is None and rec["attempts"] == 1, rec
        assert sum(c["causes"].values()) == c["n"] - c["successes"]
        assert set(c["causes"]) == set(CAUSES)
    md = (out / "sim_success.md").read_text()
    assert "Long horizon (`clear_table`" in md and "| train |" in md


def test_put_all_the_red_things_away_with_the_expert(tmp_path):
    """A long prompt naming a colour through the runtime (scripted expert as the controller): the
    red objects are carried to the drop zone one after another, the others stay on the table, and
    the planner reports the prompt complete."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from planner.server import create_app
    from planner.server.background import serve_in_thread
    from sim.long_horizon import run_episode

    with serve_in_thread(create_app(log_dir=tmp_path / "planner")) as url:
        rec = run_episode(None, url + "/v1", 100000, "train", tmp_path / "logs", n_objects=(5, 5),
                          prompt="put all the red things away",
                          extra=["sim.image_height=240", "sim.image_width=320"])
    assert rec["status"] == "completed" and rec["exit_code"] == 0, rec
    assert rec["objects"] == 5 and 1 <= rec["asked"] < 5
    assert rec["cleared"] == rec["asked"] and rec["full_success"] and rec["cause"] is None
    summary = json.loads((Path(rec["log_dir"]) / "summary.json").read_text())
    labels, final = summary["sim_initial"]["labels"], summary["sim_final"]["pos"]
    for label, pos in zip(labels, final):
        assert (pos[2] < -0.01) == label.startswith("red"), (label, pos)
    assert summary["objects_asked"] == rec["asked"] and summary["objects_remaining"] == 0
