"""Arm command safety against the RealMan emulator over a real loopback socket (issue "Hardening", point 3).

The rule under test: a joint command may move each joint at most ``max_vel * dt`` away from the
joints *measured* on the arm, ``dt`` being the real time since the previous accepted command,
capped at ``max_dt``; the joint limits always hold; the streamed frames obey the same velocity
limit. Every bound is checked on measured state (the emulator's accepted ``movej_canfd`` frames
and ``read_joints``) against timestamps recorded on the same monotonic clock, never on how fast
the test itself ran.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from inference_utils.devices import RealManArm
from inference_utils.robot_spec import ARM_LOWER, ARM_UPPER
from tests.polling import wait_until

DEG = np.pi / 180.0
#: Documented defaults (inference_utils/devices/safety.py): pi rad/s per joint, dt capped at 0.05 s.
MAX_VEL = np.pi
MAX_DT = 0.05
#: 0.001 degree wire resolution and float noise.
TOL = 1e-4


def wait_quiet(emu, quiet_s=0.1, timeout=5.0):
    """Poll (bounded) until the emulator has received no frame for ``quiet_s``: streaming is over."""
    state = {"n": -1, "since": time.monotonic()}

    def quiet():
        n, now = len(emu.canfd_frames()), time.monotonic()
        if n != state["n"]:
            state["n"], state["since"] = n, now
        return now - state["since"] >= quiet_s

    assert wait_until(quiet, timeout), "the stream never went quiet"


def wait_settled(arm, emu, timeout=5.0):
    """Poll (bounded) until the stream has reached the last accepted target and the arm holds it."""

    def settled():
        target, streamed = arm.last_commanded, arm.stream_position()
        return ((streamed is None or np.allclose(streamed, target, atol=1e-9))
                and np.allclose(emu.joints_rad(), target, atol=TOL))

    assert wait_until(settled, timeout), "the stream never reached its last target"


def frames_since(emu, t0):
    """``(receive time, joints)`` of every frame the emulator accepted at or after ``t0``."""
    frames = emu.canfd_frames()
    assert all(ok for _, _, ok in frames), "the emulator refused a frame"
    return [(t, q) for t, q, _ in frames if t >= t0]


def assert_velocity_bound(frames, q_start, t0, frame_dt_cap, max_vel=MAX_VEL):
    """Measured position vs time: ``|q(t) - q_start| <= max_vel * (t - t0 + frame_dt_cap)``.

    ``frame_dt_cap`` is the first frame's allowance (a frame is credited at most that much time;
    two streaming periods). Returns the largest measured displacement (rad).
    """
    worst = 0.0
    for t, q in frames:
        moved = np.abs(q - q_start)
        allowed = max_vel * (t - t0 + frame_dt_cap) + TOL
        assert np.all(moved <= allowed), (
            f"measured motion {np.rad2deg(moved.max()):.2f} deg at t0+{(t - t0) * 1000:.1f} ms exceeds "
            f"{np.rad2deg(allowed.max() if np.ndim(allowed) else allowed):.2f} deg")
        worst = max(worst, float(moved.max()))
    return worst


def test_rapid_sends_cannot_add_up(arm, emu):
    """15 rapid +5 degree commands and one more: the arm moves at most max_vel * elapsed."""
    q_start = arm.read_joints()
    t0 = time.monotonic()
    for k in range(1, 16):
        arm.send_joints(q_start + 5.0 * DEG * k)
    arm.send_joints(q_start + 5.0 * DEG * 16)  # the later "+5 degrees" command
    t_end = time.monotonic()
    wait_quiet(emu)

    frames = frames_since(emu, t0)
    assert frames and emu.violations == 0
    worst_frame = assert_velocity_bound(frames, q_start, t0, 2 * arm.canfd_period_s)

    # Where the arm ends up: the last target is at most max_vel * max_dt from a measured position
    # that itself obeyed the bound above when the last command was sent (before t_end).
    wait_settled(arm, emu)
    final = arm.read_joints()
    moved = np.abs(final - q_start)
    allowed = MAX_VEL * (t_end - t0 + MAX_DT + 2 * arm.canfd_period_s) + TOL
    assert np.all(moved <= allowed), (np.rad2deg(moved.max()), np.rad2deg(allowed))
    print(f"burst of 16 sends over {(t_end - t0) * 1000:.1f} ms: measured motion "
          f"{np.rad2deg(moved.max()):.2f} deg (largest mid-burst {np.rad2deg(worst_frame):.2f} deg, "
          f"bound {np.rad2deg(allowed):.2f} deg; the former driver moved about 48 deg)")
    assert arm.clamped_commands >= 1  # commands that asked for too much are counted


def test_command_past_a_joint_limit_is_clamped_to_the_limit(emu):
    upper, lower = ARM_UPPER.copy(), ARM_LOWER.copy()
    upper[0], lower[1] = 0.3, -0.3  # narrowed limits on joints 1 and 2 (rad)
    with RealManArm(host="127.0.0.1", port=emu.port, upper=upper, lower=lower) as arm:
        q_start = arm.read_joints()
        beyond = q_start.copy()
        beyond[0], beyond[1] = upper[0] + 1.0, lower[1] - 1.0
        t0 = time.monotonic()
        sent = []

        def push():  # keep asking for the far target, as fast as the link allows
            sent.append(arm.send_joints(beyond))
            return np.isclose(emu.joints_rad()[0], upper[0], atol=TOL) and \
                np.isclose(emu.joints_rad()[1], lower[1], atol=TOL)

        assert wait_until(push, timeout=5.0, period=0.002), "the arm never reached its limits"
        wait_quiet(emu)
        frames = frames_since(emu, t0)
        assert_velocity_bound(frames, q_start, t0, 2 * arm.canfd_period_s)
        wait_settled(arm, emu)
        joints = np.array([q for _, q in frames])
        assert joints[:, 0].max() <= upper[0] + TOL and joints[:, 1].min() >= lower[1] - TOL
        assert all(s[0] <= upper[0] and s[1] >= lower[1] for s in sent)
        np.testing.assert_allclose(sent[-1][:2], [upper[0], lower[1]])  # clamped to, not short of, the limit
        final = arm.read_joints()
        np.testing.assert_allclose(final[:2], [upper[0], lower[1]], atol=TOL)

        # The RM75 limits too: from just inside, a command far beyond lands on the limit.
        near = np.clip(final, lower, upper)  # the wire's 0.001 degree rounding may read 5e-6 rad past it
        near[5] = ARM_UPPER[5] - 0.05
        arm.move_to(near, duration_s=0.3)
        beyond_hw = near.copy()
        beyond_hw[5] = ARM_UPPER[5] + 1.0
        sent_hw = arm.send_joints(beyond_hw)
        assert sent_hw[5] == ARM_UPPER[5]
        wait_settled(arm, emu)
        assert arm.read_joints()[5] == pytest.approx(ARM_UPPER[5], abs=TOL)
        assert emu.violations == 0
        assert arm.command_guard.limit_clamped_count >= 2


def test_long_pause_does_not_allow_a_jump(arm, emu):
    q0 = arm.read_joints()
    arm.send_joints(q0)          # an accepted command...
    time.sleep(10 * MAX_DT)      # ...then a long pause
    wait_settled(arm, emu)
    q_start = arm.read_joints()
    t0 = time.monotonic()
    first = arm.send_joints(q_start + 1.0)   # 57 degrees asked on every joint
    arm.send_joints(q_start + 1.0)           # and again, at once
    arm.send_joints(q_start + 1.0)
    t_end = time.monotonic()
    wait_quiet(emu)
    assert_velocity_bound(frames_since(emu, t0), q_start, t0, 2 * arm.canfd_period_s)
    assert np.all(np.abs(first - q_start) <= MAX_VEL * MAX_DT + TOL)  # the pause is credited max_dt only
    wait_settled(arm, emu)
    moved = np.abs(arm.read_joints() - q_start)
    allowed = MAX_VEL * (MAX_DT + (t_end - t0) + 2 * arm.canfd_period_s) + TOL
    assert np.all(moved <= allowed), (np.rad2deg(moved.max()), np.rad2deg(allowed))
    record = arm.command_guard.last
    assert record.dt <= MAX_DT and record.clamped


def test_max_dt_is_configurable(emu):
    with RealManArm(host="127.0.0.1", port=emu.port, max_dt_s=0.02, max_joint_vel_rad_s=1.0) as arm:
        q0 = arm.read_joints()
        time.sleep(0.2)
        sent = arm.send_joints(q0 + 1.0)
        np.testing.assert_allclose(sent - q0, 1.0 * 0.02, atol=1e-12)
        assert arm.command_guard.last.dt == pytest.approx(0.02)


def test_streaming_and_direct_paths_obey_the_same_rule(arm, emu):
    """A ramp asked at twice the limit: each command and the streamed motion both stay within it."""
    assert np.array_equal(arm.frame_guard.max_vel, arm.command_guard.max_vel)
    assert np.array_equal(arm.frame_guard.upper, arm.command_guard.upper)
    assert np.array_equal(arm.frame_guard.lower, arm.command_guard.lower)
    q_start = arm.read_joints()
    t0 = time.monotonic()
    calls = []
    for k in range(1, 11):  # 18 degrees per 50 ms asked: 360 deg/s
        before = time.monotonic()
        sent = arm.send_joints(q_start + 18.0 * DEG * k)
        calls.append((before, time.monotonic(), sent, arm.command_guard.last))
        time.sleep(0.05)
    wait_quiet(emu)

    # Streaming path: measured motion over time.
    frames = frames_since(emu, t0)
    worst = assert_velocity_bound(frames, q_start, t0, 2 * arm.canfd_period_s)
    wait_settled(arm, emu)
    assert worst > 20 * DEG  # it did move, at the limit, rather than standing still
    # Direct path: every command moved at most max_vel * dt from the measured joints, where dt is
    # real time since the previous command (capped), and the reference really was measured.
    measured_positions = [q_start] + [q for _, q, _ in emu.canfd_frames()]
    prev_after = None
    for before, after, sent, rec in calls:
        np.testing.assert_array_equal(rec.result, sent)
        assert np.all(np.abs(rec.result - rec.reference) <= MAX_VEL * rec.dt + 1e-12)
        assert 0.0 <= rec.dt <= MAX_DT
        if prev_after is not None:
            assert rec.dt <= after - prev_before
        assert min(np.abs(rec.reference - q).max() for q in measured_positions) <= TOL
        prev_before, prev_after = before, after
    # The frame guard's own record obeys the same inequality with its own dt.
    frame_rec = arm.frame_guard.last
    assert np.all(np.abs(frame_rec.result - frame_rec.reference) <= MAX_VEL * frame_rec.dt + 1e-12)
    assert frame_rec.dt <= 2 * arm.canfd_period_s
    assert arm.clamped_commands >= 1 and emu.violations == 0


# -- the guard itself, on a scripted clock -------------------------------------------------------------
def test_guard_credits_real_elapsed_time_capped():
    from inference_utils.devices.safety import JointVelocityGuard

    guard = JointVelocityGuard(1.0, 0.05)
    ref = np.zeros(7)
    np.testing.assert_allclose(guard.limit(np.full(7, 1.0), ref, now=10.0), 0.05)  # first: max_dt
    np.testing.assert_allclose(guard.limit(np.full(7, 1.0), ref, now=10.001), 0.001)  # 1 ms later
    np.testing.assert_allclose(guard.limit(np.full(7, 1.0), ref, now=20.0), 0.05)  # long pause: capped
    np.testing.assert_allclose(guard.limit(np.full(7, 1.0), ref, now=19.0), 0.0)  # clock went back: nothing
    np.testing.assert_allclose(guard.limit(np.full(7, 0.01), ref, now=19.05), 0.01)  # small moves pass as asked
    assert guard.last.clamped is False and guard.commands == 5 and guard.clamped_count == 4
    guard.reset()
    np.testing.assert_allclose(guard.limit(np.full(7, -1.0), ref, now=19.051), -0.05)
    # Per-joint limits, and joint limits win over the reference.
    per_joint = JointVelocityGuard([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], 0.1)
    np.testing.assert_allclose(per_joint.limit(np.full(7, 5.0), ref, now=0.0),
                               [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07])
    near = ARM_UPPER - 0.001
    out = guard.limit(ARM_UPPER + 1.0, near, now=30.0)
    np.testing.assert_array_equal(out, ARM_UPPER)
    assert guard.last.limit_clamped.all()


def test_clamps_are_counted_and_logged_at_a_limited_rate(caplog):
    from inference_utils.devices.safety import JointVelocityGuard

    guard = JointVelocityGuard(1.0, 0.05, name="test arm", log_interval_s=60.0)
    with caplog.at_level("WARNING", logger="inference_utils.devices.safety"):
        for k in range(50):
            guard.limit(np.full(7, 1.0), np.zeros(7), now=1.0 + k * 1e-3)
    assert guard.stats() == {"commands": 50, "clamped": 50, "limit_clamped": 0, "velocity_clamped": 50}
    messages = [r.getMessage() for r in caplog.records if "test arm clamped" in r.getMessage()]
    assert len(messages) == 1 and "joint 1" in messages[0] and "velocity" in messages[0]


@pytest.mark.parametrize("kwargs, field", [
    ({"max_joint_vel_rad_s": 4.0}, "max_joint_vel_rad_s"),            # above the rated 180 deg/s of J1
    ({"max_joint_vel_rad_s": 0.0}, "max_joint_vel_rad_s"),
    ({"max_joint_vel_rad_s": [1.0] * 6}, "max_joint_vel_rad_s"),
    ({"max_joint_vel_rad_s": True}, "max_joint_vel_rad_s"),
    ({"max_joint_vel_rad_s": [1.0] * 6 + [float("nan")]}, "max_joint_vel_rad_s"),
    ({"max_dt_s": 0.0}, "max_dt_s"),
    ({"max_dt_s": 1.0}, "max_dt_s"),
])
def test_invalid_velocity_config_is_refused(kwargs, field):
    from inference_utils.devices import DeviceConfigError, make_arm, sim_devices  # noqa: F401 - registers "sim"

    with pytest.raises(DeviceConfigError, match=field):
        make_arm({"type": "realman", **kwargs})
    with pytest.raises(DeviceConfigError, match=field):
        make_arm({"type": "sim", **kwargs})


def test_velocity_config_per_joint_up_to_the_rated_speeds():
    from inference_utils.devices import make_arm
    from inference_utils.devices.safety import ARM_RATED_JOINT_VEL_RAD_S

    arm = make_arm({"type": "realman", "max_joint_vel_rad_s": ARM_RATED_JOINT_VEL_RAD_S.tolist(), "max_dt_s": 0.1})
    np.testing.assert_array_equal(arm.command_guard.max_vel, ARM_RATED_JOINT_VEL_RAD_S)
    np.testing.assert_array_equal(arm.frame_guard.max_vel, ARM_RATED_JOINT_VEL_RAD_S)
    assert arm.command_guard.max_dt == 0.1 and arm.frame_guard.max_dt == 2 * arm.canfd_period_s
    default = make_arm({"type": "realman"})
    np.testing.assert_array_equal(default.command_guard.max_vel, np.full(7, MAX_VEL))
    assert default.command_guard.max_dt == MAX_DT
