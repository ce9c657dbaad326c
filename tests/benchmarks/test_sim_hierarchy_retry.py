"""Single-object prompts through the runtime with retries (issue 24 targets, the paper's @1/@2/@3):
the prompt names the scene's designated target, success@k counts the first verified attempt that
lifted the asked object, and the column runs end to end in ``sim_success``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sim.long_horizon import CAUSES, episode_summary, single_prompt_stats

REPO = Path(__file__).resolve().parents[2]
CKPT = REPO / "assets" / "controller_small_sim"


def _attempt(success, target, lifted):
    still = [[0.0, 0.0, 0.02], [0.2, 0.0, 0.02]]
    lift = [0.0, 0.0]
    lift[target] = 0.2 if lifted else 0.0
    return {"success": success, "duration_s": 1.0, "recovery": [{"to": "grasp"}],
            "sim_truth": {"target": target, "max_lift": lift, "start_pos": still, "end_pos": still,
                          "end_lift": lift}}


def test_first_success_counts_only_the_asked_object():
    final = {"pos": [[0.0, 0.0, 0.02], [0.2, 0.0, 0.02]]}
    miss, wrong, hit = _attempt(False, 0, False), _attempt(True, 1, True), _attempt(True, 0, True)
    assert episode_summary({"outcomes": [miss, hit], "sim_final": final}, [0])["first_success"] == 2
    # a verified grasp of another object is no success of the prompt "grasp the <object 0>"
    assert episode_summary({"outcomes": [wrong, miss, hit], "sim_final": final}, [0])["first_success"] == 3
    assert episode_summary({"outcomes": [miss, miss], "sim_final": final}, [0])["first_success"] is None


def test_success_at_k_and_causes():
    def rec(first, attempts, causes):
        return {"first_success": first, "attempts": attempts, "attempt_causes": causes}

    records = [rec(1, 1, []), rec(2, 2, ["missed"]), rec(3, 3, ["missed", "rolled_away"]),
               rec(None, 3, ["missed", "missed", "dropped"]), rec(None, 1, [])]
    s = single_prompt_stats(records, 3)
    assert [s["success_at"][str(k)]["successes"] for k in (1, 2, 3)] == [1, 2, 3]
    assert s["successes"] == 3 and s["n"] == 5 and s["rate"] == 0.6
    lo, hi = s["wilson95"]
    assert lo < 0.6 < hi
    assert s["attempts_per_success"] == pytest.approx(10 / 3)
    assert s["causes"]["dropped"] == 1 and s["causes"]["timeout"] == 1 and sum(s["causes"].values()) == 2
    assert s["attempt_causes"]["missed"] == 4 and set(s["causes"]) == set(CAUSES)


def test_designated_prompt_names_the_runtime_scene_target():
    """The prompt is computed from the runtime's own sim section: it names the object the
    environment marks as the target of that seed."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from inference_utils.runtime.config import compose_config
    from inference_utils.runtime.environment import sim_config_from
    from sim import GraspEnv
    from sim.long_horizon import designated_prompt

    cfg = compose_config(["robot=sim", "sim.seed=100003", "sim.split=unseen_objects", "sim.n_objects=[4,10]"])
    prompt = designated_prompt(cfg)
    config = sim_config_from(cfg.sim, float(cfg.loop.control_hz))
    with GraspEnv(config.with_(image_height=120, image_width=160)) as env:
        _, info = env.reset(seed=100003, split="unseen_objects")
        target = info["objects"][env.scene.target]
    assert prompt == f"grasp the {target['label']}", (prompt, target)


@pytest.mark.skipif(not (CKPT / "config.yaml").exists(), reason="shipped checkpoint absent")
def test_hierarchy_retry_column_end_to_end(tmp_path, sim_success):
    out = tmp_path / "table"
    assert sim_success.main(["--checkpoint", str(CKPT), "--columns", "hierarchy_retry", "--episodes", "1",
                             "--splits", "unseen_lighting", "--retry-attempts", "2", "--time-limit", "1.0",
                             "--num-samples", "1", "--threads", "1", "--out", str(out)]) == 0
    c = json.loads((out / "sim_success.json").read_text())["rows"]["unseen_lighting"]["hierarchy_retry"]
    rec = c["records"][0]
    assert rec["error"] is None and 1 <= rec["attempts"] <= 2 and rec["prompt"].startswith("grasp the ")
    assert rec["asked"] == 1, rec                         # the designated target is unique in its scene
    assert c["attempts"] == 2 and set(c["success_at"]) == {"1", "2"}
    assert c["success_at"]["1"]["successes"] <= c["success_at"]["2"]["successes"] == c["successes"]
    assert sum(c["causes"].values()) == c["n"] - c["successes"]
    md = (out / "sim_success.md").read_text()
    assert "`hierarchy_retry`" in md and "| unseen_lighting |" in md


def test_verified_grasp_of_an_unasked_object_is_wrong_object():
    final = {"pos": [[0.0, 0.0, 0.02], [3.0, 0.0, -50.0]]}
    rec = episode_summary({"outcomes": [_attempt(True, 1, True)], "sim_final": final}, [0])
    assert rec["first_success"] is None and rec["successes"] == 0
    assert rec["attempt_causes"] == ["wrong_object"] and rec["cause"] == "wrong_object"
