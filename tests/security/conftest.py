"""The device tests' emulator fixtures (real loopback servers), shared with the security tests."""
import pytest

from tests.inference_utils.devices.conftest import (arm, arm_emulator, hand, hand_emulator,  # noqa: F401
                                                    make_modbus_hand)


@pytest.fixture
def emu(arm_emulator):
    """The arm emulator under a short name."""
    return arm_emulator
