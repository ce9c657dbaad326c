"""RealManArm against the JSON-protocol emulator on loopback."""
from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

from inference_utils.arm_emulator import ArmEmulator, forward_kinematics
from inference_utils.devices import (
    DeviceConnectionError,
    DeviceNotConnectedError,
    DeviceSafetyError,
    RealManArm,
)
from inference_utils.devices.interpolation import CubicStreamInterpolator
from inference_utils.robot_spec import ARM_LOWER, ARM_UPPER
from tests.polling import wait_until

DEG = np.pi / 180.0


def test_connect_reads_joints_state_and_pose(arm, arm_emulator):
    q = arm.read_joints()
    assert q.shape == (7,) and np.allclose(q, 0.0)
    state = arm.read_state()
    np.testing.assert_allclose(state["pose"], forward_kinematics(np.zeros(7)), atol=1e-5)
    assert state["errors"].size == 0
    assert arm_emulator.received("clear_system_err")  # cleared on connect


def test_streaming_interpolates_at_canfd_rate(arm, arm_emulator):
    targets = [np.full(7, 4.0 * DEG * (k + 1)) for k in range(10)]
    t0 = time.monotonic()
    for target in targets:
        sent = arm.send_joints(target)
        np.testing.assert_allclose(sent, target)
        time.sleep(0.05)
    assert wait_until(lambda: np.allclose(arm_emulator.joints_rad(), targets[-1], atol=1e-4))
    elapsed = time.monotonic() - t0
    frames = arm_emulator.canfd_frames()
    assert all(ok for _, _, ok in frames) and arm_emulator.violations == 0
    # 10 targets x 5 interpolated frames, each 10 ms apart (a late target replans mid-segment,
    # so a loaded machine may see fewer frames).
    assert 25 <= len(frames) <= 60
    assert len(frames) / elapsed > 40  # nominally 100 Hz
    joints = np.array([j for _, j, _ in frames])
    steps = np.abs(np.diff(joints, axis=0))
    assert steps.max() < 3.0 * DEG  # each 4 deg target is spread over several frames
    msg = arm_emulator.received()
    assert all(m["command"] != "movej_canfd" for m in msg)  # canfd is logged separately


def test_send_joints_clamps_step_and_limits(arm, arm_emulator):
    step = arm.command_guard.max_command_step  # max_joint_vel_rad_s * max_dt_s per joint
    sent = arm.send_joints(np.full(7, 1.0))  # 57 deg away
    np.testing.assert_allclose(sent, step)
    assert wait_until(lambda: np.allclose(arm_emulator.joints_rad(), sent, atol=1e-4))
    time.sleep(arm.max_dt_s)  # a full control period later the next step starts from the measured joints
    sent2 = arm.send_joints(np.full(7, 1.0))
    np.testing.assert_allclose(sent2, 2 * step, atol=1e-4)  # 0.001 degree wire resolution
    assert wait_until(lambda: np.allclose(arm_emulator.joints_rad(), sent2, atol=1e-4))
    assert arm_emulator.violations == 0
    # Limits: joint 7 cannot go beyond its upper limit, whatever the step.
    arm.hold()
    arm.move_to(ARM_UPPER - 0.05, duration_s=0.3)
    sent3 = arm.send_joints(ARM_UPPER + 1.0)
    np.testing.assert_allclose(sent3, ARM_UPPER)
    with pytest.raises(DeviceSafetyError):
        arm.send_joints([np.nan] * 7)
    with pytest.raises(DeviceSafetyError):
        arm.send_joints(np.zeros(6))


def test_hold_stops_streaming(arm, arm_emulator):
    arm.send_joints(np.full(7, 5.0 * DEG))
    held = arm.hold()
    n = len(arm_emulator.canfd_frames())
    time.sleep(0.1)
    assert len(arm_emulator.canfd_frames()) == n
    np.testing.assert_allclose(arm.last_commanded, held)
    # After a hold the step clamp is measured from the held (= measured) position.
    sent = arm.send_joints(held + 1.0)
    np.testing.assert_allclose(sent, held + arm.command_guard.max_command_step, atol=1e-4)


def test_move_to_runs_movej_and_resyncs_stream(arm, arm_emulator):
    target = np.array([0.3, -0.2, 0.1, -0.5, 0.2, 0.4, -0.1])
    t0 = time.monotonic()
    reached = arm.move_to(target, duration_s=0.4)
    assert 0.25 < time.monotonic() - t0 < 3.0
    np.testing.assert_allclose(reached, target, atol=5e-5)
    movej = arm_emulator.received("movej")[-1]
    assert movej["joint"] == [int(round(v * 180000 / np.pi)) for v in target]
    assert 1 <= movej["v"] <= 100
    # Wire resolution: 0.001 mm and 0.001 rad.
    np.testing.assert_allclose(arm.read_pose(), forward_kinematics(target), atol=1e-3)
    sent = arm.send_joints(target + 1.0)
    np.testing.assert_allclose(sent, np.minimum(reached + arm.command_guard.max_command_step, ARM_UPPER))


def test_move_to_outside_limits_refused_before_motion(arm, arm_emulator):
    bad = np.zeros(7)
    bad[1] = ARM_LOWER[1] - 0.1
    with pytest.raises(DeviceSafetyError, match="joint 2"):
        arm.move_to(bad, duration_s=1.0)
    assert arm_emulator.received("movej") == []


def test_clear_errors(arm, arm_emulator):
    arm_emulator.inject_error(0x5001)
    assert arm.read_state()["errors"].tolist() == [0x5001]
    arm.clear_errors()
    assert arm.read_state()["errors"].size == 0


def test_emulator_rejects_oversized_canfd_frames(arm_emulator):
    with socket.create_connection(("127.0.0.1", arm_emulator.port), timeout=2) as sock:
        frame = {"command": "movej_canfd", "joint": [15000, 0, 0, 0, 0, 0, 0], "follow": True}
        sock.sendall(json.dumps(frame).encode() + b"\r\n")
        frame["joint"][0] = 9000
        sock.sendall(json.dumps(frame).encode() + b"\r\n")
        assert wait_until(lambda: len(arm_emulator.canfd_frames()) == 2)
    flags = [ok for _, _, ok in arm_emulator.canfd_frames()]
    assert flags == [False, True]
    assert arm_emulator.violations == 1
    assert arm_emulator.joints_rad()[0] == pytest.approx(9.0 * DEG)


def test_connection_errors(arm_emulator):
    port = arm_emulator.port
    arm = RealManArm(host="127.0.0.1", port=port, timeout_s=0.5)
    with pytest.raises(DeviceNotConnectedError):
        arm.read_joints()
    arm.connect()
    arm_emulator.stop()
    with pytest.raises(DeviceConnectionError, match=f"127.0.0.1:{port}"):
        for _ in range(100):  # the streaming thread notices the dead link
            arm.send_joints(np.zeros(7))
            arm.read_joints()
            time.sleep(0.01)
    arm.disconnect()
    with pytest.raises(DeviceConnectionError, match=f"127.0.0.1:{port}"):
        RealManArm(host="127.0.0.1", port=port, timeout_s=0.5).connect()


def test_context_manager_and_custom_interpolation():
    with ArmEmulator(port=0) as emu:
        with RealManArm(host="127.0.0.1", port=emu.port, interpolation_num=10, canfd_period_s=0.005) as arm:
            assert arm.is_connected
            arm.send_joints(np.full(7, 2.0 * DEG))
            assert wait_until(lambda: np.allclose(emu.joints_rad(), 2.0 * DEG, atol=1e-4))
            assert len(emu.canfd_frames()) == 10
        assert not arm.is_connected


def test_interpolator_reaches_targets_smoothly():
    interp = CubicStreamInterpolator(n_points=5, period_s=0.01, dof=7)
    interp.reset(np.zeros(7))
    frames = interp.plan(np.full(7, 0.1))
    assert frames.shape == (5, 7)
    np.testing.assert_allclose(frames[-1], 0.1)
    assert np.all(np.diff(frames[:, 0]) > 0)  # monotone from rest
    frames2 = interp.plan(np.full(7, 0.2))
    np.testing.assert_allclose(frames2[-1], 0.2)
    # Velocity is continuous across the joint between segments (no stop at each target).
    v_end = (frames[-1, 0] - frames[-2, 0]) / 0.01
    v_start = (frames2[0, 0] - frames[-1, 0]) / 0.01
    assert v_start == pytest.approx(v_end, rel=0.3)
    assert interp.next_frame() is None  # idle -> hold
    np.testing.assert_allclose(interp.velocity, 0.0)
    with pytest.raises(ValueError):
        CubicStreamInterpolator(n_points=0, period_s=0.01)
