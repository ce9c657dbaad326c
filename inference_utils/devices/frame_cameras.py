"""Cameras that need no hardware: a synthetic pattern and a replay of recorded frames."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from inference_utils.devices.base import Camera, DeviceConfigError, DeviceTimeoutError
from inference_utils.devices.validation import check_int


class SyntheticCamera(Camera):
    """Deterministic moving colour gradient (BGR uint8), for bring-up and tests."""

    def __init__(self, width: int = 640, height: int = 480, fps: int = 30, seed: int = 0):
        self.width = check_int(width, "width", 1, 8192)
        self.height = check_int(height, "height", 1, 8192)
        self.fps = check_int(fps, "fps", 1, 1000)
        self.seed = int(seed)
        self.label = f"SyntheticCamera({self.width}x{self.height})"
        self._connected = False
        self._index = 0
        yy, xx = np.mgrid[0:self.height, 0:self.width]
        self._xx = (xx * 255 // max(1, self.width - 1)).astype(np.uint8)
        self._yy = (yy * 255 // max(1, self.height - 1)).astype(np.uint8)

    @property
    def is_connected(self) -> bool:
        """True after connect()."""
        return self._connected

    def connect(self) -> None:
        """Start 'streaming' (frame counter restarts)."""
        self._connected = True
        self._index = 0

    def disconnect(self) -> None:
        """Stop."""
        self._connected = False

    def read_with_timestamp(self) -> tuple[np.ndarray, float]:
        """Frame ``k``: blue = x gradient shifted by k, green = y gradient, red = k + seed."""
        self._require_connected()
        k = self._index
        self._index += 1
        image = np.empty((self.height, self.width, 3), dtype=np.uint8)
        image[:, :, 0] = self._xx + np.uint8(k % 256)
        image[:, :, 1] = self._yy
        image[:, :, 2] = np.uint8((k + self.seed) % 256)
        return image, k / self.fps


class FrameSequenceCamera(Camera):
    """Replays BGR frames from a list/array, a ``.npy``/``.npz`` file, or a video file.

    ``loop=False`` raises :class:`DeviceTimeoutError` once the sequence is exhausted.
    For ``.npz`` files ``key`` selects the array (default: the first one).
    """

    def __init__(
        self,
        frames: Sequence[np.ndarray] | np.ndarray | str | os.PathLike,
        fps: int = 30,
        loop: bool = True,
        key: str | None = None,
    ):
        self.fps = check_int(fps, "fps", 1, 1000)
        self.loop = bool(loop)
        self._source = frames
        self._key = key
        self._frames: np.ndarray | None = None
        if not isinstance(frames, (str, os.PathLike)):
            self._frames = self._validate(np.asarray(frames))
        elif not os.path.isfile(os.fspath(frames)):
            raise DeviceConfigError(f"frames: file not found: {os.fspath(frames)!r}")
        name = os.path.basename(os.fspath(frames)) if isinstance(frames, (str, os.PathLike)) else "array"
        self.label = f"FrameSequenceCamera({name})"
        self._connected = False
        self._index = 0
        if self._frames is not None:
            self.height, self.width = self._frames.shape[1:3]

    @staticmethod
    def _validate(arr: np.ndarray) -> np.ndarray:
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
            raise DeviceConfigError(f"frames: expected (N, H, W, 3) BGR images, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise DeviceConfigError(f"frames: expected uint8 images, got {arr.dtype}")
        return arr

    def _load(self) -> np.ndarray:
        path = os.fspath(self._source)
        if path.endswith(".npy"):
            return self._validate(np.load(path, allow_pickle=False))
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as data:
                key = self._key or data.files[0]
                if key not in data.files:
                    raise DeviceConfigError(f"key: {key!r} not in {path} (has {data.files})")
                return self._validate(data[key])
        import cv2  # noqa: PLC0415 - only for video files

        cap = cv2.VideoCapture(path)
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
        cap.release()
        if not frames:
            raise DeviceConfigError(f"frames: could not decode any frame from {path!r}")
        return self._validate(np.stack(frames))

    @property
    def is_connected(self) -> bool:
        """True after connect()."""
        return self._connected

    def connect(self) -> None:
        """Load the frames (files are read here) and rewind."""
        if self._frames is None:
            self._frames = self._load()
            self.height, self.width = self._frames.shape[1:3]
        self._index = 0
        self._connected = True

    def disconnect(self) -> None:
        """Stop."""
        self._connected = False

    def __len__(self) -> int:
        return 0 if self._frames is None else len(self._frames)

    def read_with_timestamp(self) -> tuple[np.ndarray, float]:
        """Next frame (a copy) and its nominal timestamp ``index / fps``."""
        self._require_connected()
        n = len(self._frames)
        if self._index >= n and not self.loop:
            raise DeviceTimeoutError(f"{self.label}: all {n} frames have been read (loop=False)")
        k = self._index
        self._index += 1
        return self._frames[k % n].copy(), k / self.fps

