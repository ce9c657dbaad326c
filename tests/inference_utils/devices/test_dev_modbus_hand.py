"""ModbusHand against the hand emulator over real Modbus TCP on loopback."""
from __future__ import annotations

import time

import numpy as np
import pytest

from inference_utils.devices import (
    DeviceConnectionError,
    DeviceError,
    DeviceNotConnectedError,
    DeviceSafetyError,
    HandRegisterMap,
)
from inference_utils.hand_emulator import HandEmulator
from tests.polling import wait_until


def test_connect_writes_speed_and_force(hand_emulator, make_modbus_hand):
    hand = make_modbus_hand(speed=[100, 200, 300, 400, 500, 600], force=321)
    hand.connect()
    assert hand.is_connected
    assert hand_emulator.read_block("speed_set").tolist() == [100, 200, 300, 400, 500, 600]
    assert hand_emulator.read_block("force_set").tolist() == [321] * 6
    np.testing.assert_allclose(hand.read(), np.ones(6))


def test_send_clamps_converts_and_fingers_move(hand, hand_emulator):
    sent = hand.send([0.0, 0.25, 0.5, 1.0, -0.3, 1.7])
    np.testing.assert_allclose(sent, [0.0, 0.25, 0.5, 1.0, 0.0, 1.0])
    assert hand_emulator.read_block("angle_set").tolist() == [0, 250, 500, 1000, 0, 1000]
    np.testing.assert_allclose(hand.read_targets(), sent)
    assert wait_until(lambda: np.allclose(hand.read(), sent, atol=0.002))
    force = hand.read_force()
    assert force[0] > 0 and force[4] > 0 and force[3] == 0  # closed fingers press, open ones do not
    # read() matches to 2 units of 1000 a step or two before the emulator reports "reached"
    # (within 0.5 units): wait for the status too instead of racing the emulator's update thread
    assert wait_until(lambda: hand.read_status().tolist() == [2] * 6)
    assert hand.read_temperature().tolist() == [30] * 6
    hand.open()
    assert wait_until(lambda: np.allclose(hand.read(), 1.0, atol=0.002))


def test_send_rounds_to_register_resolution(hand, hand_emulator):
    sent = hand.send([0.12345] * 6)
    np.testing.assert_allclose(sent, [0.123] * 6)
    assert hand_emulator.read_block("angle_set").tolist() == [123] * 6


def test_speed_sets_motion_rate(hand, hand_emulator):
    hand.set_speed(50)  # 50 * 1.5 * 4 = 300 units/s
    assert hand_emulator.read_block("speed_set").tolist() == [50] * 6
    hand.send(np.zeros(6))
    time.sleep(0.5)
    mid = hand.read()
    assert np.all(mid < 1.0) and np.all(mid > 0.5), mid  # moving, but far from closed
    hand.set_speed([1000] * 6)
    assert wait_until(lambda: np.allclose(hand.read(), 0.0, atol=0.002))
    with pytest.raises(ValueError, match="speed"):
        hand.set_speed(1001)


def test_force_setup_and_obstacle(hand, hand_emulator):
    hand.set_force(300)
    hand_emulator.set_obstacle([400, -1, -1, -1, -1, -1])
    hand.send(np.zeros(6))
    assert wait_until(lambda: hand.read()[1] < 0.002)
    assert hand.read()[0] == pytest.approx(0.4, abs=0.002)
    assert hand.read_force()[0] == 300
    assert hand.read_status()[0] == 3  # stopped by force


def test_errors_read_and_clear(hand, hand_emulator):
    hand_emulator.inject_error(2, code=4)
    assert hand.read_errors().tolist() == [0, 0, 4, 0, 0, 0]
    hand.send(np.zeros(6))
    time.sleep(0.3)
    assert hand.read()[2] == 1.0  # a faulted finger does not move
    hand.clear_errors()
    assert hand.read_errors().tolist() == [0] * 6
    assert hand_emulator.clear_error_count >= 2  # once on connect, once here
    state = hand.read_state()
    assert set(state) == {"angles", "force", "error", "status", "temperature"}


def test_unsafe_and_disconnected_commands(make_modbus_hand, hand_emulator):
    hand = make_modbus_hand()
    with pytest.raises(DeviceNotConnectedError):
        hand.send(np.ones(6))
    with pytest.raises(DeviceNotConnectedError):
        hand.read()
    with hand:
        with pytest.raises(DeviceSafetyError):
            hand.send([np.nan] * 6)
        with pytest.raises(DeviceSafetyError):
            hand.send([0.5] * 5)
    assert not hand.is_connected


def test_dropped_link_needs_an_explicit_connect(hand, hand_emulator):
    hand.send([0.5] * 6)
    port = hand_emulator.port
    hand_emulator.stop()
    restarted = HandEmulator(host="127.0.0.1", port=port, speed_scale=4.0).start()
    try:
        # The old TCP connection is dead: the driver says so and does not re-open it by itself.
        with pytest.raises(DeviceNotConnectedError, match="link lost"):
            hand.read()
        assert not hand.is_connected
        with pytest.raises(DeviceNotConnectedError):
            hand.send([0.2] * 6)
        hand.connect()
        np.testing.assert_allclose(hand.read(), np.ones(6))
        hand.send([0.2] * 6)
        assert restarted.read_block("angle_set").tolist() == [200] * 6
    finally:
        restarted.stop()


def test_emulator_stopped_mid_use_raises_connection_error(hand, hand_emulator):
    hand.send([0.5] * 6)
    hand_emulator.stop()
    start = time.monotonic()
    with pytest.raises(DeviceConnectionError) as info:
        hand.send([0.1] * 6)
    message = str(info.value)
    assert f"127.0.0.1:{hand_emulator.port}" in message
    assert "link lost" in message and not hand.is_connected
    assert time.monotonic() - start < 5.0


def test_connect_to_nothing_raises_connection_error(make_modbus_hand, hand_emulator):
    port = hand_emulator.port
    hand_emulator.stop()
    hand = make_modbus_hand(port=port)
    with pytest.raises(DeviceConnectionError, match=f"127.0.0.1:{port}"):
        hand.connect()
    assert not hand.is_connected


def test_custom_register_map():
    custom = {"angle_set": 100, "force_set": 110, "speed_set": 120, "angle_act": 130,
              "force_act": 140, "error": 150, "status": 160, "temp": 170, "clear_error": 10}
    with HandEmulator(port=0, register_map=custom, speed_scale=4.0) as emu:
        from inference_utils.devices import ModbusHand

        with ModbusHand(host="127.0.0.1", port=emu.port, register_map=custom, timeout_s=0.3) as hand:
            hand.send([0.0] * 6)
            assert emu.read_block("angle_set").tolist() == [0] * 6
            assert wait_until(lambda: np.allclose(hand.read(), 0.0, atol=0.002))


def test_device_exception_response_is_a_clear_error(make_modbus_hand, hand_emulator):
    wrong = HandRegisterMap(angle_set=2000)  # not mapped by the emulator
    hand = make_modbus_hand(register_map=wrong, clear_errors_on_connect=False)
    hand.connect()
    with pytest.raises(DeviceError, match="refused by the device"):
        hand.send(np.ones(6))
