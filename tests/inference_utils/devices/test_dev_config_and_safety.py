"""Factory, configuration validation and safety clamps (no I/O needed)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from inference_utils.devices import (
    DeviceConfigError,
    DeviceSafetyError,
    HandRegisterMap,
    ModbusHand,
    RealManArm,
    make_arm,
    make_camera,
    make_hand,
    register_device,
    registered_types,
)
from inference_utils.devices.frame_cameras import SyntheticCamera
from inference_utils.devices.safety import check_arm_within_limits, clamp_arm_target, clamp_hand
from inference_utils.robot_spec import ARM_LOWER, ARM_MAX_STEP_RAD, ARM_UPPER


def test_unknown_type_lists_valid_types():
    with pytest.raises(DeviceConfigError, match=r"valid types are \['modbus'"):
        make_hand({"type": "psibot"})
    with pytest.raises(DeviceConfigError, match="arm.type: missing"):
        make_arm({"host": "127.0.0.1"})
    assert {"realsense", "synthetic", "frames"} <= set(registered_types("camera"))


@pytest.mark.parametrize(
    "cfg, field",
    [
        ({"type": "modbus", "host": "127.0.0.1", "port": 70000}, "port"),
        ({"type": "modbus", "host": "300.1.1.1"}, "host"),
        ({"type": "modbus", "host": "127.0.0.1", "speed": 1200}, "speed"),
        ({"type": "modbus", "host": "127.0.0.1", "force": [1, 2, 3]}, "force"),
        ({"type": "modbus", "host": "127.0.0.1", "force": -1}, "force"),
        ({"type": "modbus", "host": "127.0.0.1", "unit_id": 300}, "unit_id"),
        ({"type": "modbus", "host": "127.0.0.1", "timeout_s": 0}, "timeout_s"),
        ({"type": "modbus", "host": "127.0.0.1", "register_map": {"angle_set": -5}}, "register_map.angle_set"),
        ({"type": "modbus", "host": "127.0.0.1", "register_map": {"angle_sett": 5}}, "register_map.angle_sett"),
        ({"type": "modbus", "host": "127.0.0.1", "register_map": {"force_set": 1490}}, "register_map.force_set"),
        ({"type": "modbus", "host": "127.0.0.1", "baud": 9600}, "hand.baud"),
        ({"type": "modbus"}, "host"),
        ({"type": "modbus", "serial_port": "/dev/ttyUSB0", "baudrate": 12}, "baudrate"),
    ],
)
def test_invalid_hand_config_names_the_field(cfg, field):
    with pytest.raises(DeviceConfigError, match=field.replace(".", r"\.")):
        make_hand(cfg)


@pytest.mark.parametrize(
    "cfg, field",
    [
        ({"type": "realman", "host": "192.168.1"}, "host"),
        ({"type": "realman", "port": 0}, "port"),
        ({"type": "realman", "max_step_rad": 0.5}, "max_step_rad"),
        ({"type": "realman", "interpolation_num": 0}, "interpolation_num"),
        ({"type": "realman", "canfd_period_s": 1.0}, "canfd_period_s"),
        ({"type": "realman", "lower": [0.0] * 7, "upper": [-1.0] * 7}, "lower/upper"),
        ({"type": "realman", "upper": [10.0] * 7}, "lower/upper"),
        ({"type": "realman", "lower": [0.0] * 6}, "lower"),
    ],
)
def test_invalid_arm_config_names_the_field(cfg, field):
    with pytest.raises(DeviceConfigError, match=field):
        make_arm(cfg)


def test_valid_configs_from_mapping_dataclass_and_omegaconf():
    hand = make_hand({"type": "modbus", "host": "localhost", "port": 5020, "speed": 800})
    assert isinstance(hand, ModbusHand) and hand.speed == [800] * 6 and not hand.is_connected
    rtu = make_hand({"type": "modbus", "serial_port": "/dev/ttyUSB0", "baudrate": 115200})
    assert rtu.endpoint == "/dev/ttyUSB0@115200"

    @dataclasses.dataclass
    class ArmCfg:
        type: str = "realman"
        host: str = "192.168.1.18"
        port: int = 8080

    assert isinstance(make_arm(ArmCfg()), RealManArm)
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"type": "synthetic", "width": 32, "height": "${.width}"})
    cam = make_camera(cfg)
    assert (cam.width, cam.height) == (32, 32)


def test_register_device_extends_registry():
    class MyCam(SyntheticCamera):
        pass

    register_device("camera", "my_test_cam", MyCam)
    assert isinstance(make_camera({"type": "my_test_cam", "width": 8, "height": 8}), MyCam)
    with pytest.raises(ValueError, match="already registered"):
        register_device("camera", "my_test_cam", SyntheticCamera)
    with pytest.raises(ValueError, match="kind"):
        register_device("gripper", "x", MyCam)


def test_register_map_default_is_rh56():
    rmap = HandRegisterMap()
    assert (rmap.angle_set, rmap.force_set, rmap.speed_set, rmap.angle_act) == (1486, 1498, 1522, 1546)
    assert (rmap.force_act, rmap.error, rmap.status, rmap.temp, rmap.clear_error) == (1582, 1606, 1612, 1618, 1004)
    assert HandRegisterMap.from_config({"ANGLE_SET": 1486}) == rmap


def test_arm_clamps():
    ref = np.zeros(7)
    out = clamp_arm_target(np.full(7, 1.0), ref)
    np.testing.assert_allclose(out, ARM_MAX_STEP_RAD)
    out = clamp_arm_target(np.full(7, -0.05), ref)
    np.testing.assert_allclose(out, -0.05)
    out = clamp_arm_target(ARM_UPPER + 5.0, None)
    np.testing.assert_allclose(out, ARM_UPPER)
    out = clamp_arm_target(ARM_LOWER - 1.0, ARM_LOWER + 0.01)
    np.testing.assert_allclose(out, ARM_LOWER)
    with pytest.raises(DeviceSafetyError, match="non-finite"):
        clamp_arm_target([np.inf] * 7, ref)
    with pytest.raises(DeviceSafetyError, match="expected 7"):
        clamp_arm_target([0.0] * 8, ref)
    with pytest.raises(DeviceSafetyError, match="joint 7"):
        check_arm_within_limits(np.r_[np.zeros(6), 7.0])


def test_hand_clamp():
    np.testing.assert_allclose(clamp_hand([-1, 0, 0.5, 1, 2, 0.25]), [0, 0, 0.5, 1, 1, 0.25])
    with pytest.raises(DeviceSafetyError):
        clamp_hand([0.5, np.nan, 0, 0, 0, 0])
    with pytest.raises(DeviceSafetyError):
        clamp_hand("open")
