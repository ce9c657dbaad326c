"""Full planner-mode episodes in the simulator with the offline planner server over HTTP."""
from __future__ import annotations

import json

import h5py
import numpy as np

from planner.logger import LOG_FILENAME


def test_planner_episode_with_expert_controller(run_inference, planner_url):
    """clear the table: completion check -> propose -> box -> ... -> verified grasps -> done."""
    res = run_inference("--prompt", "clear the table", "--save-deployment-data", "controller.type=expert",
                        f"planner.base_url={planner_url}")
    assert res.code == 0, res.log_text
    s = res.summary
    assert s["status"] == "completed" and s["exit_code"] == 0
    calls = s["planner_calls"]
    assert calls[:4] == ["check_completion", "propose_instruction", "predict_bbox", "verify_grasp"]
    assert calls[-1] == "check_completion"
    # every attempt is: propose, box, >= 1 verification, then a completion check
    attempts, i = 0, 1
    while i < len(calls) - 1:
        assert calls[i:i + 3] == ["propose_instruction", "predict_bbox", "verify_grasp"], calls
        i += 3
        while calls[i] == "verify_grasp":
            i += 1
        assert calls[i] == "check_completion"
        i += 1
        attempts += 1
    assert attempts == s["attempts"] >= 1
    assert s["objects_grasped"] >= 1
    first = s["outcomes"][0]
    assert first["success"] and first["status"] == "verified" and first["sim_target_lifted"]
    assert first["chunks"] >= 1 and first["steps"] == 6 * first["chunks"] and len(first["box"]) == 4
    # planner log: one line per call, in order
    logged = [json.loads(line)["task"] for line in (res.dir / "planner" / LOG_FILENAME).read_text().splitlines()]
    assert logged == calls
    # run.log and stage images
    text = res.log_text
    assert "user prompt" in text and "grasp verification: success=True" in text and "took" in text
    names = res.images()
    for stage in ("initial_head", "attempt00_head", "attempt00_box", "attempt00_mask", "attempt00_verify0_wrist",
                  "final_head"):
        assert any(n.endswith(f"_{stage}.png") for n in names), (stage, names)
    assert (res.dir / "timings.json").exists() and (res.dir / "config.yaml").exists()
    # deployment data of the first attempt
    with h5py.File(res.dir / "deployment" / "attempt_000.hdf5") as f:
        t = first["steps"]
        assert f["right_cam_img"].shape == (t, 240, 320, 3) and f["rgbm"].shape == (t, 240, 320, 4)
        assert f["state"].shape == (t, 13) and f["action"].shape == (t, 13)
        assert f["rgbm"].dtype == np.uint8 and set(np.unique(f["rgbm"][0, ..., 3])) <= {0, 255}
        assert f["rgbm"][0, ..., 3].any()
    assert (res.dir / "deployment" / "attempt_000.mp4").stat().st_size > 1000
    names = [e[0] for e in res.events]
    assert names[0] == "attempt_start" and "chunk" in names and "home" in names


def test_policy_controller_executes_six_actions_per_chunk(run_inference, planner_url, tiny_checkpoint):
    """A random-weight tiny controller (deployment defaults: 4 samples averaged, temporal ensemble):
    chunks are predicted and 6 actions of each executed. The lift height is out of reach so that
    random motions never trigger a grasp verification; the attempt ends at the chunk limit."""
    res = run_inference("--prompt", "clear the table", "--gen-attn-map", "--save-deployment-data",
                        f"controller.checkpoint={tiny_checkpoint()}", "controller.seed=0", "loop.lift_height_m=4",
                        "loop.max_chunks_per_attempt=3", "loop.max_attempts=1", f"planner.base_url={planner_url}")
    assert res.code == 0, res.log_text
    s = res.summary
    assert s["status"] == "max_attempts" and s["attempts"] == 1
    out = s["outcomes"][0]
    assert out["status"] == "chunk_limit" and out["chunks"] == 3 and out["steps"] == 18
    maps = sorted(p.name for p in (res.dir / "attention_maps").iterdir())
    assert maps == [f"attempt00_chunk{i:04d}.npz" for i in range(3)]
    with h5py.File(res.dir / "deployment" / "attempt_000.hdf5") as f:
        actions = f["action"][:]
        assert actions.shape == (18, 13) and np.all(np.isfinite(actions))
    chunk_events = [d for n, d in res.events if n == "chunk"]
    assert [d["chunk"] for d in chunk_events] == [1, 2, 3]
