"""Fixtures: hand and arm emulators on free loopback ports, drivers connected to them."""
from __future__ import annotations

import pytest

from inference_utils.arm_emulator import ArmEmulator
from inference_utils.devices.modbus_hand import ModbusHand
from inference_utils.devices.realman_arm import RealManArm
from inference_utils.hand_emulator import HandEmulator


@pytest.fixture
def hand_emulator():
    """A Modbus TCP hand emulator on 127.0.0.1 and a free port (fast fingers)."""
    emu = HandEmulator(host="127.0.0.1", port=0, speed_scale=4.0).start()
    yield emu
    emu.stop()


@pytest.fixture
def make_modbus_hand(hand_emulator):
    """Factory of ModbusHand drivers pointed at the emulator (disconnected at teardown)."""
    hands: list[ModbusHand] = []

    def _make(**kwargs) -> ModbusHand:
        params = dict(host="127.0.0.1", port=hand_emulator.port, timeout_s=0.3, retries=0,
                      reconnect_attempts=2, reconnect_delay_s=0.05)
        params.update(kwargs)
        hand = ModbusHand(**params)
        hands.append(hand)
        return hand

    yield _make
    for hand in hands:
        hand.disconnect()


@pytest.fixture
def hand(make_modbus_hand):
    """A connected ModbusHand."""
    h = make_modbus_hand()
    h.connect()
    return h


@pytest.fixture
def arm_emulator():
    """A RealMan JSON-protocol emulator on 127.0.0.1 and a free port."""
    emu = ArmEmulator(host="127.0.0.1", port=0).start()
    yield emu
    emu.stop()


@pytest.fixture
def arm(arm_emulator):
    """A connected RealManArm streaming to the emulator."""
    a = RealManArm(host="127.0.0.1", port=arm_emulator.port, timeout_s=2.0)
    a.connect()
    yield a
    a.disconnect()
