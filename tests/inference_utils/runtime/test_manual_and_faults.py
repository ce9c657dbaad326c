"""Manual mode with --bbox, device faults and invalid configuration."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference_utils.hand_emulator import HandEmulator

REPO = Path(__file__).resolve().parents[3]
# seed 1, 240x320: obj0 is a red sphere at about [157, 132, 177, 152] in the head image
RED_SPHERE_BOX = "150,125,185,160"


def test_manual_mode_with_bbox(run_inference):
    res = run_inference("--manual", "--bbox", RED_SPHERE_BOX, "controller.type=expert",
                        "loop.max_chunks_per_attempt=12")
    assert res.code == 0, res.log_text
    s = res.summary
    assert s["status"] == "manual_done" and s["planner_calls"] == [] and s["attempts"] == 1
    out = s["outcomes"][0]
    assert out["box"] == [150.0, 125.0, 185.0, 160.0] and out["sim_target_index"] == 0
    assert out["status"] == "chunk_limit" and out["verifications"] == 0 and out["sim_target_lifted"]
    assert not (res.dir / "planner").exists()
    assert any(n.endswith("_attempt00_mask.png") for n in res.images())
    assert "placing the object" in res.log_text


def test_hand_emulator_stopped_mid_episode_is_a_clean_fault(run_inference):
    emu = HandEmulator(port=0).start()
    stopped = {}

    def on_event(name, data):
        if name == "chunk" and data["chunk"] == 2 and not stopped:
            stopped["t"] = time.monotonic()
            emu.stop()

    try:
        res = run_inference("--manual", "--bbox", RED_SPHERE_BOX, "controller.type=expert", "robot=emulated",
                            f"robot.hand.port={emu.port}", on_event=on_event)
    finally:
        emu.stop()
    assert stopped, "the episode never reached its second chunk"
    assert res.code == 1
    s = res.summary
    assert s["status"] == "fault" and "ModbusHand(127.0.0.1" in s["error"] and "lost" in s["error"]
    text = res.log_text
    assert "FAULT" in text and "arm held" in text and "devices disconnected" in text
    assert "opening the hand" not in text and "placing the object" not in text
    assert time.monotonic() - stopped["t"] < 30


@pytest.mark.parametrize("overrides, field", [
    (["loop.execute_actions_per_chunk=0"], "loop.execute_actions_per_chunk"),
    (["loop.lift_height_m=-1"], "loop.lift_height_m"),
    (["controller.type=policy"], "controller.checkpoint"),
    (["controller.type=policy", "controller.checkpoint=/nonexistent"], "controller.checkpoint"),
    (["controller.type=policy", "controller.temporal_ensemble=-1"], "controller.temporal_ensemble"),
    (["controller.type=policy", "controller.num_samples=0"], "controller.num_samples"),
    (["controller.type=expert", "robot=real"], "controller.type=expert"),
    (["planner.base_url=ftp://x"], "planner.base_url"),
    (["robot.hand.type=bogus"], "hand.type"),
    (["robot.hand.type=modbus", "+robot.hand.port=99999"], "port"),
    (["sim.n_objects=[0,1]"], "n_objects"),
    (["loop.no_such_key=1"], "no_such_key"),
])
def test_invalid_config_is_reported_before_motion(run_inference, overrides, field, capsys):
    res = run_inference("--prompt", "x", "controller.type=expert", *overrides)
    assert res.code == 2
    err = capsys.readouterr().err
    assert "configuration error" in err or (res.dir is not None and "configuration error" in res.log_text)
    if res.dir is None:  # rejected while validating: no run directory, nothing built
        assert field in " ".join(err.split())
    else:  # rejected while building devices / simulator / controller: nothing connected or moved
        s = res.summary
        assert s["status"] == "config_error" and field in s["error"] and s["attempts"] == 0
        assert "connecting" not in res.log_text and "moving arm" not in res.log_text


def test_unreachable_planner_fails_before_motion(run_inference):
    from planner.server.background import free_port

    res = run_inference("--prompt", "x", "controller.type=expert", "planner.max_retries=0", "planner.timeout_s=2",
                        f"planner.base_url=http://127.0.0.1:{free_port()}/v1")
    assert res.code == 2
    assert res.summary["status"] == "config_error" and "PlannerError" in res.summary["error"]
    assert "connecting" not in res.log_text


def test_shell_entry_point_exit_code(tmp_path):
    proc = subprocess.run([str(REPO / "inference.sh"), "--non-interactive", "--manual",
                           f"logging.root={tmp_path}", "controller.type=expert"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    assert "bbox" in proc.stderr and "--bbox" in proc.stderr
