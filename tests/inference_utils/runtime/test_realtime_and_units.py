"""Real-time path against the arm and hand emulators, Ctrl-C, and runtime building blocks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from inference_utils.arm_emulator import ArmEmulator
from inference_utils.hand_emulator import HandEmulator
from inference_utils.runtime.clock import Rate, RealClock, call_while_holding
from inference_utils.runtime.config import ConfigError, parse_bbox

REPO = Path(__file__).resolve().parents[3]


def test_bench_robot_realtime_with_emulators(run_inference, tiny_checkpoint):
    """Real drivers + emulators + synthetic cameras: the wall-clock path streams at 20 Hz."""
    arm, hand = ArmEmulator(port=0).start(), HandEmulator(port=0).start()
    try:
        start = time.monotonic()
        res = run_inference("--manual", "--bbox", "100,80,200,160", "robot=bench", f"robot.arm.port={arm.port}",
                            f"robot.hand.port={hand.port}", f"controller.checkpoint={tiny_checkpoint()}",
                            "loop.max_chunks_per_attempt=2", "loop.min_mask_pixels=0", "robot.move_duration_s=0.3")
        elapsed = time.monotonic() - start
    finally:
        arm.stop()
        hand.stop()
    assert res.code == 0, res.log_text
    out = res.summary["outcomes"][0]
    assert out["status"] == "chunk_limit" and out["steps"] == 12
    assert out["duration_s"] >= 11 / 20  # 12 steps paced at 20 Hz
    assert elapsed < 60


def test_ctrl_c_holds_the_arm_and_exits_130(tmp_path):
    env = dict(os.environ, MUJOCO_GL="egl", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "inference.py", "--non-interactive", "--manual", "--bbox", "150,125,185,160",
         "controller.type=expert", f"logging.root={tmp_path}", "sim.n_objects=[2,2]", "sim.seed=1",
         "sim.image_height=240", "sim.image_width=320", "robot.attempt_time_limit_s=3600"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # SIGINT inherited as ignored (a background job of a non-interactive shell): it must still stop
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            logs = list(tmp_path.glob("*/run.log"))
            if logs and "mask:" in logs[0].read_text():
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    run_dir = logs[0].parent
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    text = logs[0].read_text()
    assert "interrupted by the operator" in text and "arm held" in text and "devices disconnected" in text


def test_call_while_holding_services_the_stream():
    clock = RealClock(100.0)
    beats = []
    result = call_while_holding(lambda: time.sleep(0.2) or 42, clock, lambda: beats.append(time.monotonic()))
    assert result == 42 and len(beats) >= 10
    with pytest.raises(ZeroDivisionError):
        call_while_holding(lambda: 1 / 0, clock, lambda: None)

    def dead_device():
        raise ConnectionError("hand stopped answering")

    with pytest.raises(ConnectionError):  # a device fault during slow work surfaces at once
        call_while_holding(lambda: time.sleep(5), clock, dead_device)


def test_rate_paces_calls():
    rate, start = Rate(50.0), time.monotonic()
    for _ in range(10):
        rate.sleep()
    assert 0.18 <= time.monotonic() - start < 0.6


def test_parse_bbox():
    assert parse_bbox("1,2,30,40") == [1.0, 2.0, 30.0, 40.0]
    assert parse_bbox(None) is None
    for bad in ("1,2,3", "a,b,c,d", "30,2,1,40", "-1,0,5,5"):
        with pytest.raises(ConfigError, match="bbox"):
            parse_bbox(bad)


def test_sim_devices_clamp_and_step(tmp_path):
    from inference_utils.devices import DeviceSafetyError, make_arm, make_camera, make_hand, sim_devices
    from inference_utils.runtime.environment import sim_config_from

    session = sim_devices.open_session(sim_config_from({"n_objects": [1, 1], "image_height": 64,
                                                        "image_width": 80}, 20.0), seed=3)
    try:
        arm, hand = make_arm({"type": "sim"}), make_hand({"type": "sim"})
        cam = make_camera({"type": "sim", "role": "wrist"})
        for d in (arm, hand, cam):
            d.connect()
        q0 = arm.read_joints()
        sent = arm.send_joints(q0 + 1.0)                     # 1 rad asked, 180 deg/s x 0.05 s allowed
        assert np.allclose(sent - q0, np.deg2rad(9.0))
        assert np.allclose(hand.send([2, -1, 0.5, 0.5, 0.5, 0.5]), [1, 0, 0.5, 0.5, 0.5, 0.5])
        with pytest.raises(DeviceSafetyError):
            arm.send_joints([np.nan] * 7)
        t0 = session.time
        session.tick()
        assert session.time == pytest.approx(t0 + 0.05)
        image, stamp = cam.read_with_timestamp()
        assert image.shape == (64, 80, 3) and image.dtype == np.uint8 and stamp == session.time
    finally:
        sim_devices.close_session()


def test_sim_config_from_carries_rolling_friction():
    """``sim.rolling_friction`` of the runtime config reaches the simulator's physics option."""
    from inference_utils.runtime.environment import sim_config_from
    assert sim_config_from({"n_objects": [1, 1]}, 20.0).rolling_friction is False
    assert sim_config_from({"n_objects": [1, 1], "rolling_friction": True}, 20.0).rolling_friction is True
