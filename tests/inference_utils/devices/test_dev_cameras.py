"""Cameras: synthetic, frame replay, and RealSense through the SDK's software device."""
from __future__ import annotations

import numpy as np
import pytest

from inference_utils.devices import (
    DeviceConfigError,
    DeviceNotConnectedError,
    DeviceTimeoutError,
    FrameSequenceCamera,
    RealSenseCamera,
    SyntheticCamera,
    make_camera,
)

W, H, FPS = 640, 480, 30


def test_synthetic_camera():
    cam = make_camera({"type": "synthetic", "width": 64, "height": 48})
    with pytest.raises(DeviceNotConnectedError):
        cam.read()
    with cam:
        a, ta = cam.read_with_timestamp()
        b, tb = cam.read_with_timestamp()
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    assert tb > ta and not np.array_equal(a, b)
    assert isinstance(cam, SyntheticCamera)


def test_frame_sequence_camera_from_list_npz_and_exhaustion(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (3, 8, 10, 3), dtype=np.uint8)
    with FrameSequenceCamera(list(frames), loop=False) as cam:
        for k in range(3):
            np.testing.assert_array_equal(cam.read(), frames[k])
        with pytest.raises(DeviceTimeoutError, match="all 3 frames"):
            cam.read()
    path = tmp_path / "frames.npz"
    np.savez(path, images=frames)
    with make_camera({"type": "frames", "frames": str(path), "key": "images"}) as cam:
        for k in range(5):
            np.testing.assert_array_equal(cam.read(), frames[k % 3])
    with pytest.raises(DeviceConfigError, match="frames"):
        FrameSequenceCamera(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DeviceConfigError, match="not found"):
        FrameSequenceCamera(str(tmp_path / "missing.npz"))


def test_realsense_config_validation(tmp_path):
    with pytest.raises(DeviceConfigError, match="serial"):
        RealSenseCamera(serial="12 34")
    with pytest.raises(DeviceConfigError, match="fps"):
        RealSenseCamera(fps=0)
    with pytest.raises(DeviceConfigError, match="bag_path"):
        RealSenseCamera(bag_path=str(tmp_path / "nope.bag"))
    with pytest.raises(DeviceConfigError, match="bag_path"):
        RealSenseCamera(bag_path=str(tmp_path / "video.mp4"))


# -- pyrealsense2 software device -----------------------------------------------------------


@pytest.fixture
def rs():
    return pytest.importorskip("pyrealsense2", reason="pyrealsense2 (optional [realsense] extra) not installed")


class SoftwareColorCamera:
    """An rs.software_device with one 640x480@30 BGR8 colour stream; frames pushed by hand."""

    def __init__(self, rs):
        self.rs = rs
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.serial_number, "0000SOFT")
        self.sensor = self.device.add_sensor("Color")
        stream = rs.video_stream()
        stream.type, stream.index, stream.uid = rs.stream.color, 0, 0
        stream.width, stream.height, stream.fps = W, H, FPS
        stream.bpp, stream.fmt = 3, rs.format.bgr8
        intr = rs.intrinsics()
        intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = W, H, 600.0, 600.0, W / 2, H / 2
        stream.intrinsics = intr
        self.profile = self.sensor.add_video_stream(stream).as_video_stream_profile()
        self.count = 0

    def push(self, image: np.ndarray) -> None:
        frame = self.rs.software_video_frame()
        frame.pixels = np.ascontiguousarray(image)
        frame.bpp, frame.stride = 3, W * 3
        frame.timestamp = self.count * 1000.0 / FPS
        frame.domain = self.rs.timestamp_domain.hardware_clock
        frame.frame_number = self.count
        frame.profile = self.profile
        self.sensor.on_video_frame(frame)
        self.count += 1


def make_image(k: int) -> np.ndarray:
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = 10 + k  # blue
    image[..., 2] = 200     # red
    image[k, k] = (1, 2, 3)
    return image


def test_realsense_reads_software_device(rs):
    soft = SoftwareColorCamera(rs)
    cam = RealSenseCamera(device=soft.device, timeout_ms=500)
    with cam:
        for k in range(3):
            soft.push(make_image(k))
            image, stamp = cam.read_with_timestamp()
            np.testing.assert_array_equal(image, make_image(k))
            assert stamp == pytest.approx(k / FPS)
        with pytest.raises(DeviceTimeoutError, match="no colour frame within 500 ms"):
            cam.read()
    assert not cam.is_connected


def test_realsense_wrong_profile_is_clear_error(rs):
    soft = SoftwareColorCamera(rs)
    from inference_utils.devices import DeviceConnectionError

    with pytest.raises(DeviceConnectionError, match="1280x720@30"):
        RealSenseCamera(device=soft.device, width=1280, height=720).connect()


def test_realsense_plays_back_a_recording(rs, tmp_path):
    soft = SoftwareColorCamera(rs)
    path = str(tmp_path / "color.db3")  # librealsense >= 2.57 records rosbag2 (.db3)
    try:
        recorder = rs.recorder(path, soft.device)
    except RuntimeError as exc:
        if ".db3" not in str(exc):
            raise
        path = str(tmp_path / "color.bag")
        recorder = rs.recorder(path, soft.device)
    rec_sensor = recorder.query_sensors()[0]
    queue = rs.frame_queue(10)
    rec_sensor.open(soft.profile)
    rec_sensor.start(queue)
    for k in range(4):
        soft.push(make_image(k))
        queue.wait_for_frame(1000)
    rec_sensor.stop()
    rec_sensor.close()
    del rec_sensor, recorder  # flushes and closes the file

    with make_camera({"type": "realsense", "bag_path": path, "real_time": False, "timeout_ms": 1000}) as cam:
        for k in range(4):
            np.testing.assert_array_equal(cam.read(), make_image(k))
        with pytest.raises(DeviceTimeoutError, match="recording ended"):
            cam.read()
