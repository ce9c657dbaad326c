"""The project's one way to write a video: H.264 MP4 through ``imageio-ffmpeg``.

Used by the deployment recorder (``inference_utils/runtime/recorder.py``, streamed frame by frame
from its writer thread) and the simulator evaluator (``sim/evaluate.py``, a list of frames).
``imageio_ffmpeg.write_frames`` pipes raw frames into the bundled ffmpeg binary, so there is no
system ffmpeg to install and no second route (``imageio.get_writer`` / ``cv2.VideoWriter`` / PyAV).

Frames are ``uint8`` arrays of shape ``(H, W, 3)``, BGR by default (OpenCV's order, which the
cameras and the recorder use); pass ``rgb=True`` for RGB frames. All frames of one file must have
the size of the first. ``macro_block_size`` > 1 lets ffmpeg pad/scale the size up to a multiple of
it (H.264 with yuv420p needs even sizes); 1 writes the frames at their own size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np


class Mp4Writer:
    """Streaming MP4 writer; opens the file on the first frame (its size fixes the video's).

    Args:
        path: output ``.mp4`` file.
        fps: frame rate.
        rgb: frames are RGB (default: BGR).
        quality: imageio-ffmpeg quality, 0-10 (higher is better, bigger).
        macro_block_size: see the module docstring.
        codec: ffmpeg encoder.
    """

    def __init__(self, path: str | Path, fps: float, *, rgb: bool = False, quality: float = 5,
                 macro_block_size: int = 16, codec: str = "libx264") -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.rgb = rgb
        self.quality = quality
        self.macro_block_size = int(macro_block_size)
        self.codec = codec
        self._gen: Optional[Any] = None
        self._size: Optional[tuple[int, int]] = None
        self.frames = 0

    def append(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"Mp4Writer: expected an (H, W, 3) uint8 frame, got shape {frame.shape}")
        h, w = frame.shape[:2]
        if self._gen is None:
            import imageio_ffmpeg  # noqa: PLC0415

            self._size = (w, h)
            self._gen = imageio_ffmpeg.write_frames(
                str(self.path), (w, h), fps=self.fps, pix_fmt_in="rgb24" if self.rgb else "bgr24",
                quality=self.quality, codec=self.codec, macro_block_size=self.macro_block_size)
            self._gen.send(None)  # start ffmpeg
        elif (w, h) != self._size:
            raise ValueError(f"Mp4Writer: frame size {(w, h)} differs from the first frame's {self._size}")
        self._gen.send(frame.tobytes())
        self.frames += 1

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float, *, rgb: bool = False,
              quality: float = 5, macro_block_size: int = 16, codec: str = "libx264") -> Path:
    """Write ``frames`` (BGR unless ``rgb``) to the MP4 ``path``; returns the path."""
    with Mp4Writer(path, fps, rgb=rgb, quality=quality, macro_block_size=macro_block_size, codec=codec) as w:
        for frame in frames:
            w.append(frame)
    return Path(path)
