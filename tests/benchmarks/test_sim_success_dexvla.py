"""``benchmarks/sim_success.py --columns dexvla`` (issue 23): a tiny random DexVLA checkpoint, made
here with save_checkpoint, runs one short episode per split end to end in the real simulator; the
column is in the JSON and the Markdown table with its counts, and every chunk's reasoning is
recorded with the instruction naming the target (success is not expected from random weights)."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dexvla_column_one_episode_per_split(tmp_path, sim_success):
    import cv2

    from sim.config import SPLITS
    from tests.controller.dexvla_helpers import make_tiny_dexvla_checkpoint

    mod = sim_success
    ckpt = make_tiny_dexvla_checkpoint(tmp_path)
    out = tmp_path / "table"
    cv_threads = cv2.getNumThreads()
    try:
        assert mod.main(["--columns", "dexvla", "--dexvla-checkpoint", ckpt, "--episodes", "1", "--splits", *SPLITS,
                         "--time-limit", "0.6", "--threads", "1", "--out", str(out)]) == 0
    finally:
        cv2.setNumThreads(cv_threads)
    report = json.loads((out / "sim_success.json").read_text())
    assert report["dexvla_checkpoint"] == ckpt and report["checkpoint"] is None
    assert list(report["rows"]) == list(SPLITS)
    for split, row in report["rows"].items():
        col = row["dexvla"]
        assert set(row) == {"dexvla"} and col["n"] == 1 and col["successes"] in (0, 1)
        lo, hi = col["wilson95"]
        assert 0.0 <= lo <= col["rate"] <= hi <= 1.0 and col["num_samples"] == 1
        rec = col["records"][0]
        assert rec["seed"] == 100000                     # the same seeds as the other columns
        assert rec["instruction"].startswith("grasp the ") and len(rec["instruction"].split()) >= 4
        assert len(rec["reasoning"]) >= 1 and all(isinstance(t, str) and t for t in rec["reasoning"])
    md = (out / "sim_success.md").read_text()
    assert "dexvla success (95 % CI)" in md and "| unseen_lighting |" in md and "DexVLA checkpoint" in md


def test_dexvla_column_needs_its_checkpoint(capsys, sim_success):
    mod = sim_success
    with pytest.raises(SystemExit):
        mod.main(["--columns", "dexvla", "--episodes", "1"])
    assert "--dexvla-checkpoint CKPT or --dexvla-remote" in capsys.readouterr().err


def test_merge_keeps_dexvla_beside_the_controller(tmp_path, sim_success):
    """A dexvla-only run (no controller checkpoint) merges with a controller run of the same splits."""
    mod = sim_success
    stats = {"successes": 1, "n": 2, "rate": 0.5, "wilson95": [0.1, 0.9], "s_per_attempt": 1.0}
    for name, ck, dx, col in (("a", "ck", None, "controller"), ("b", None, "dx", "dexvla")):
        (tmp_path / name).mkdir()
        report = {"checkpoint": ck, "episodes": 2, "rows": {"train": {col: stats}}}
        if dx:
            report["dexvla_checkpoint"] = dx
        (tmp_path / name / "sim_success.json").write_text(json.dumps(report))
    assert mod.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "sim_success.json").read_text())
    assert merged["checkpoint"] == "ck" and merged["dexvla_checkpoint"] == "dx"
    assert set(merged["rows"]["train"]) == {"controller", "dexvla"}
    assert "controller success (95 % CI) | dexvla success (95 % CI)" in (tmp_path / "m" / "sim_success.md").read_text()


def test_dexvla_column_through_a_policy_server(tmp_path, sim_success):
    """--dexvla-remote: the instruction travels with each request, the reasoning comes back."""
    from controller.policy_server.dexvla import ServedDexVLAPolicy
    from controller.policy_server.server import PolicyServer
    from tests.controller.dexvla_helpers import make_tiny_dexvla_checkpoint

    mod = sim_success
    served = ServedDexVLAPolicy.from_checkpoint(make_tiny_dexvla_checkpoint(tmp_path), "cpu")
    out = tmp_path / "table"
    with PolicyServer(served, "127.0.0.1", 0).running_in_thread() as server:
        assert mod.main(["--columns", "dexvla", "--dexvla-remote", f"127.0.0.1:{server.port}", "--episodes", "1",
                         "--splits", "train", "--time-limit", "0.6", "--out", str(out)]) == 0
        assert server.stats["requests"] >= 1 and server.stats["error_replies"] == 0
    report = json.loads((out / "sim_success.json").read_text())
    assert report["dexvla_checkpoint"].startswith("remote ws://127.0.0.1:")
    rec = report["rows"]["train"]["dexvla"]["records"][0]
    assert rec["instruction"].startswith("grasp the ") and rec["reasoning"] and all(rec["reasoning"])
