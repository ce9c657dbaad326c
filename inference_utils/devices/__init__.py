"""Device layer: camera, arm and hand interfaces, real drivers, and the device factory.

Typical use (the runtime loop)::

    from inference_utils.devices import make_arm, make_camera, make_hand

    with make_arm(cfg.arm) as arm, make_hand(cfg.hand) as hand:
        sent = arm.send_joints(q_target)      # joint limits + joint speed vs measured state
        hand.send(values)                     # clamped to [0, 1]
"""
from inference_utils.devices.base import (
    Arm,
    Camera,
    Device,
    DeviceConfigError,
    DeviceConnectionError,
    DeviceError,
    DeviceLinkLostError,
    DeviceNotConnectedError,
    DeviceSafetyError,
    DeviceTimeoutError,
    Hand,
)
from inference_utils.devices.factory import (
    make_arm,
    make_camera,
    make_device,
    make_hand,
    register_device,
    registered_types,
)
from inference_utils.devices.frame_cameras import FrameSequenceCamera, SyntheticCamera
from inference_utils.devices.modbus_hand import ModbusHand
from inference_utils.devices.realman_arm import RealManArm
from inference_utils.devices.realsense_camera import RealSenseCamera
from inference_utils.devices.register_map import RH56_REGISTER_MAP, HandRegisterMap

__all__ = [
    "Arm", "Camera", "Device", "Hand",
    "DeviceError", "DeviceConfigError", "DeviceConnectionError", "DeviceNotConnectedError",
    "DeviceLinkLostError", "DeviceSafetyError", "DeviceTimeoutError",
    "make_arm", "make_camera", "make_device", "make_hand", "register_device", "registered_types",
    "FrameSequenceCamera", "SyntheticCamera", "RealSenseCamera", "ModbusHand", "RealManArm",
    "HandRegisterMap", "RH56_REGISTER_MAP",
]
