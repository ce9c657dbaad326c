"""Intel RealSense colour camera on ``pyrealsense2`` (optional dependency ``[realsense]``).

Three sources, one interface:

* a live camera, by serial number (``serial=None`` takes the first one found);
* a recording (``bag_path=...``: ``.bag`` for librealsense 2.5x recordings, ``.db3`` for the
  rosbag2 files written by newer SDKs), played back through the SDK pipeline;
* an injected ``rs.device`` (``device=...``), e.g. an ``rs.software_device`` in tests, read
  straight from its colour sensor.

Frames come out as BGR ``uint8 (height, width, 3)``; no frame within ``timeout_ms`` raises
:class:`DeviceTimeoutError`.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from inference_utils.devices.base import (
    Camera,
    DeviceConfigError,
    DeviceConnectionError,
    DeviceError,
    DeviceTimeoutError,
)
from inference_utils.devices.validation import check_int, check_serial


def _import_rs() -> Any:
    try:
        import pyrealsense2 as rs  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise DeviceError(
            "RealSenseCamera needs pyrealsense2: pip install 'dexgraspvla[realsense]' "
            f"(and the system library libusb-1.0) -- {exc}"
        ) from exc
    return rs


class RealSenseCamera(Camera):
    """Colour stream of a RealSense camera, a recording, or an injected (software) device."""

    def __init__(
        self,
        serial: str | int | None = None,
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        timeout_ms: int = 1000,
        bag_path: str | os.PathLike | None = None,
        repeat_playback: bool = False,
        real_time: bool = True,
        device: Any = None,
        queue_size: int = 2,
    ):
        self.serial = check_serial(serial, "serial")
        self.width = check_int(width, "width", 16, 4096)
        self.height = check_int(height, "height", 16, 4096)
        self.fps = check_int(fps, "fps", 1, 300)
        self.timeout_ms = check_int(timeout_ms, "timeout_ms", 1, 600_000)
        self.queue_size = check_int(queue_size, "queue_size", 1, 64)
        self.bag_path = None
        if bag_path is not None:
            path = os.fspath(bag_path)
            if not path.endswith((".bag", ".db3")):
                raise DeviceConfigError(f"bag_path: expected a .bag or .db3 recording, got {path!r}")
            if not os.path.isfile(path):
                raise DeviceConfigError(f"bag_path: file not found: {path!r}")
            self.bag_path = path
        if sum(x is not None for x in (self.serial, self.bag_path, device)) > 1:
            raise DeviceConfigError("RealSenseCamera: give at most one of serial, bag_path, device")
        self.repeat_playback = bool(repeat_playback)
        self.real_time = bool(real_time)
        self._device = device
        source = self.bag_path or self.serial or ("injected device" if device is not None else "first camera")
        self.label = f"RealSenseCamera({source})"
        self._pipeline: Any = None
        self._sensor: Any = None
        self._queue: Any = None
        self._connected = False

    @property
    def is_connected(self) -> bool:
        """True while streaming."""
        return self._connected

    def connect(self) -> None:
        """Start streaming colour at ``width x height @ fps``."""
        if self._connected:
            return
        rs = _import_rs()
        if self._device is not None:
            self._start_sensor(rs)
        else:
            self._start_pipeline(rs)
        self._connected = True

    def _start_pipeline(self, rs: Any) -> None:
        pipeline, config = rs.pipeline(), rs.config()
        if self.bag_path is not None:
            config.enable_device_from_file(self.bag_path, repeat_playback=self.repeat_playback)
        elif self.serial is not None:
            config.enable_device(self.serial)
        config.enable_stream(rs.stream.color, self.width, self.height, rs.format.bgr8, self.fps)
        if self.bag_path is not None and not self.real_time:
            # Switch the playback device to non-real-time BEFORE it starts: set after start(), a loaded
            # machine played the first frames in real time and dropped them. resolve() creates the
            # playback device and the config hands that same device to start().
            try:
                config.resolve(pipeline).get_device().as_playback().set_real_time(False)
            except RuntimeError as exc:
                raise DeviceConnectionError(f"{self.label}: cannot open recording {self.bag_path!r}: {exc}") from exc
        try:
            profile = pipeline.start(config)
        except RuntimeError as exc:
            raise DeviceConnectionError(
                f"{self.label}: cannot start colour {self.width}x{self.height}@{self.fps} BGR8: {exc}. "
                f"Connected RealSense serials: {self._connected_serials(rs)}"
            ) from exc
        if self.bag_path is not None:
            profile.get_device().as_playback().set_real_time(self.real_time)
        self._pipeline = pipeline

    @staticmethod
    def _connected_serials(rs: Any) -> list[str]:
        try:
            return [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
        except RuntimeError:
            return []

    def _start_sensor(self, rs: Any) -> None:
        sensors = list(self._device.query_sensors())
        for sensor in sensors:
            for prof in sensor.get_stream_profiles():
                if prof.stream_type() != rs.stream.color or prof.format() not in (rs.format.bgr8, rs.format.rgb8):
                    continue
                video = prof.as_video_stream_profile()
                if (video.width(), video.height(), prof.fps()) == (self.width, self.height, self.fps):
                    self._queue = rs.frame_queue(self.queue_size)
                    sensor.open(prof)
                    sensor.start(self._queue)
                    self._sensor = sensor
                    return
        raise DeviceConnectionError(
            f"{self.label}: no colour profile {self.width}x{self.height}@{self.fps} (BGR8/RGB8) on the device"
        )

    def disconnect(self) -> None:
        """Stop streaming (idempotent)."""
        if not self._connected:
            return
        self._connected = False
        try:
            if self._pipeline is not None:
                self._pipeline.stop()
            if self._sensor is not None:
                self._sensor.stop()
                self._sensor.close()
        except RuntimeError:
            pass
        self._pipeline = self._sensor = self._queue = None

    def read_with_timestamp(self) -> tuple[np.ndarray, float]:
        """Next colour frame as BGR uint8 and its device timestamp in seconds."""
        self._require_connected()
        rs = _import_rs()
        if self._pipeline is not None:
            ok, frames = self._pipeline.try_wait_for_frames(self.timeout_ms)
            frame = frames.get_color_frame() if ok else None
        else:
            try:
                frame = self._queue.wait_for_frame(self.timeout_ms)
            except RuntimeError:
                frame = None
        if not frame:
            what = "recording ended or" if self.bag_path else "camera"
            raise DeviceTimeoutError(f"{self.label}: no colour frame within {self.timeout_ms} ms ({what} stalled)")
        video = frame.as_video_frame()
        image = np.asanyarray(video.get_data()).copy()
        if image.shape != (self.height, self.width, 3):
            raise DeviceError(f"{self.label}: unexpected frame shape {image.shape}")
        if video.get_profile().format() == rs.format.rgb8:
            image = np.ascontiguousarray(image[:, :, ::-1])
        return image, float(frame.get_timestamp()) / 1000.0
