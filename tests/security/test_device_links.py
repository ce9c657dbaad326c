"""Link state of the arm and hand drivers over real loopback sockets (issue "Hardening", point 9).

When the peer goes away, the driver must say so: ``is_connected`` turns False, the read or send
that found the dead link and every later one raise ``DeviceNotConnectedError``, and nothing
reconnects until ``connect()`` is called -- even when the device is reachable again.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from inference_utils.arm_emulator import ArmEmulator
from inference_utils.devices import (
    DeviceConnectionError,
    DeviceError,
    DeviceNotConnectedError,
    HandRegisterMap,
    ModbusHand,
    RealManArm,
)
from inference_utils.hand_emulator import HandEmulator
from tests.polling import wait_until

DEG = np.pi / 180.0


@pytest.fixture
def arm_emu():
    emulators = [ArmEmulator(host="127.0.0.1", port=0).start()]
    yield emulators  # a test may append a restarted emulator
    for emu in emulators:
        emu.stop()


@pytest.fixture
def hand_emu():
    emulators = [HandEmulator(host="127.0.0.1", port=0, speed_scale=4.0).start()]
    yield emulators
    for emu in emulators:
        emu.stop()


# -- arm ------------------------------------------------------------------------------------------
def test_arm_read_on_a_dead_link_marks_it_disconnected(arm_emu):
    emu = arm_emu[0]
    port = emu.port
    arm = RealManArm(host="127.0.0.1", port=port, timeout_s=1.0)
    arm.connect()
    try:
        assert arm.is_connected
        emu.stop()
        with pytest.raises(DeviceNotConnectedError, match=f"127.0.0.1:{port}"):
            arm.read_joints()
        assert not arm.is_connected
        for call in (arm.read_joints, arm.read_state, arm.hold, lambda: arm.send_joints(np.zeros(7))):
            with pytest.raises(DeviceNotConnectedError, match="link lost"):
                call()
        # The controller is back: still nothing happens until an explicit connect().
        arm_emu.append(ArmEmulator(host="127.0.0.1", port=port).start())
        time.sleep(0.1)
        assert not arm.is_connected
        with pytest.raises(DeviceNotConnectedError):
            arm.read_joints()
        arm.connect()
        assert arm.is_connected
        np.testing.assert_allclose(arm.read_joints(), 0.0)
        arm.send_joints(np.full(7, 2.0 * DEG))
        assert wait_until(lambda: np.allclose(arm_emu[1].joints_rad(), 2.0 * DEG, atol=1e-4))
    finally:
        arm.disconnect()


def test_arm_send_on_a_dead_link_marks_it_disconnected(arm_emu):
    emu = arm_emu[0]
    arm = RealManArm(host="127.0.0.1", port=emu.port, timeout_s=1.0)
    arm.connect()
    try:
        emu.stop()
        with pytest.raises(DeviceNotConnectedError):
            arm.send_joints(np.full(7, 1.0 * DEG))
        assert not arm.is_connected
        with pytest.raises(DeviceNotConnectedError):
            arm.send_joints(np.full(7, 1.0 * DEG))
    finally:
        arm.disconnect()
    assert not arm.is_connected


def test_arm_streaming_thread_notices_the_dead_link(arm_emu):
    """No call from the caller: the streaming thread's failed send alone flips is_connected."""
    emu = arm_emu[0]
    # A slow segment: one target keeps the stream sending frames for 2 s.
    arm = RealManArm(host="127.0.0.1", port=emu.port, timeout_s=1.0, interpolation_num=200)
    arm.connect()
    try:
        arm.send_joints(np.full(7, 5.0 * DEG))
        assert wait_until(lambda: len(emu.canfd_frames()) > 0)
        emu.stop()
        assert wait_until(lambda: not arm.is_connected, timeout=5.0), "is_connected stayed True"
        with pytest.raises(DeviceNotConnectedError, match="link lost"):
            arm.read_joints()
        with pytest.raises(DeviceConnectionError):  # the same error is also a connection error
            arm.send_joints(np.zeros(7))
    finally:
        arm.disconnect()


# -- hand -----------------------------------------------------------------------------------------
def make_hand(port, **kwargs):
    params = dict(host="127.0.0.1", port=port, timeout_s=0.3, retries=0, reconnect_attempts=2,
                  reconnect_delay_s=0.05)
    params.update(kwargs)
    return ModbusHand(**params)


def test_hand_read_on_a_dead_link_marks_it_disconnected(hand_emu):
    emu = hand_emu[0]
    port = emu.port
    hand = make_hand(port)
    hand.connect()
    try:
        hand.send([0.5] * 6)
        emu.stop()
        with pytest.raises(DeviceNotConnectedError, match=f"ModbusHand\\(127.0.0.1:{port}\\).*link lost"):
            hand.read()
        assert not hand.is_connected
        for call in (hand.read, hand.read_state, hand.open, lambda: hand.send([0.2] * 6)):
            with pytest.raises(DeviceNotConnectedError):
                call()
        # The server is back on the same port: the driver still does not reconnect by itself.
        restarted = HandEmulator(host="127.0.0.1", port=port, speed_scale=4.0).start()
        hand_emu.append(restarted)
        with pytest.raises(DeviceNotConnectedError):
            hand.read()
        assert not hand.is_connected
        assert restarted.read_block("angle_set").tolist() == [1000] * 6  # nothing was written to it
        hand.connect()
        assert hand.is_connected
        hand.send([0.2] * 6)
        assert restarted.read_block("angle_set").tolist() == [200] * 6
    finally:
        hand.disconnect()


def test_hand_send_on_a_dead_link_marks_it_disconnected(hand_emu):
    emu = hand_emu[0]
    hand = make_hand(emu.port)
    hand.connect()
    try:
        emu.stop()
        with pytest.raises(DeviceNotConnectedError):
            hand.send([0.1] * 6)
        assert not hand.is_connected
        with pytest.raises(DeviceNotConnectedError):
            hand.send([0.1] * 6)
    finally:
        hand.disconnect()


def test_hand_exception_response_keeps_the_link(hand_emu):
    """A Modbus exception *response* means the device answered: an error, but the link is up."""
    hand = make_hand(hand_emu[0].port, register_map=HandRegisterMap(angle_set=2000), clear_errors_on_connect=False)
    hand.connect()
    try:
        with pytest.raises(DeviceError, match="refused by the device"):
            hand.send(np.ones(6))
        assert hand.is_connected
        np.testing.assert_allclose(hand.read(), np.ones(6))
    finally:
        hand.disconnect()


def test_hand_connect_to_nothing_tries_then_reports(hand_emu):
    emu = hand_emu[0]
    port = emu.port
    emu.stop()
    hand = make_hand(port)
    with pytest.raises(DeviceConnectionError, match=f"127.0.0.1:{port}"):
        hand.connect()
    assert not hand.is_connected


def test_arm_reply_line_without_newline_is_capped():
    """A peer that never ends its line cannot grow the driver's buffer without bound."""
    import socket as _socket

    from inference_utils.devices.realman_protocol import LineReader

    ours, peer = _socket.socketpair()
    try:
        reader = LineReader(ours, max_line_bytes=4096)
        peer.sendall(b'{"ok": true}\n')
        assert reader.read(1.0) == {"ok": True}
        peer.sendall(b"x" * 10_000)
        with pytest.raises(ConnectionError, match="without a line break"):
            reader.read(1.0)
        assert len(reader._buffer) == 0
    finally:
        ours.close()
        peer.close()
