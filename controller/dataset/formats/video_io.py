"""Frame-accurate reading and writing of mp4 videos with PyAV (used by the LeRobot v3.0 format).

Reading: :func:`read_frame` returns the RGB frame of a file at a timestamp (seconds, as stored in
the stream's presentation times). Random access seeks to the key frame at or before the target
and decodes forward; reading the next frames of the same file continues decoding without seeking
(so a whole episode costs one seek). Decoders are cached per file **per process** and nothing
here is pickled, so lazy arrays built on it are safe in DataLoader workers.

Forks: the decoders of a process are closed right before it forks (``os.register_at_fork``) and
reopened on the next read, since a container inherited by a child can neither be used nor freed
there (freeing it joins codec threads that only exist in the parent).

Writing: :class:`VideoWriter` encodes RGB frames (h264 in yuv420p by default: what LeRobot's own
readers and every browser decode) with presentation time ``i / fps`` for the ``i``-th frame of the
file, so episodes concatenated in one file start at ``frames_before / fps``.

Every failure is a :class:`VideoError` naming the file and the timestamp; the format reader adds
the key and episode.
"""
from __future__ import annotations

import collections
import fractions
import os
import threading
from typing import Any, Optional

import numpy as np

from controller.dataset.errors import DatasetError

__all__ = ["VideoError", "VideoWriter", "clear_decoder_cache", "probe_video", "read_frame"]

#: Open decoders kept per process (least recently used closed first).
MAX_OPEN_DECODERS = 16
#: Decode forward (instead of seeking) when the target is at most this many seconds ahead.
FORWARD_WINDOW_S = 2.0


class VideoError(DatasetError):
    """A video file is missing, unreadable, or has no frame at a requested timestamp."""

    def __init__(self, message: str, file: str = "", timestamp: Optional[float] = None):
        super().__init__(message)
        self.file, self.timestamp = file, timestamp


def _av() -> Any:
    try:
        import av  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - av is a declared dependency
        raise DatasetError("reading/writing videos needs PyAV: pip install av") from exc
    return av


class _Decoder:
    """One open file: its container, the decode iterator and the last frame decoded."""

    def __init__(self, path: str):
        av = _av()
        try:
            self.container = av.open(path, "r")
            self.stream = self.container.streams.video[0]
        except (IndexError, OSError, av.error.FFmpegError) as exc:
            raise VideoError(f"{path}: cannot open as a video ({type(exc).__name__}: {exc}); "
                             f"expected an mp4 file with a video stream", file=path) from exc
        self.path = path
        # one swscale context per open file, reused: frame.to_ndarray(format=...) sets up a new one for
        # every frame (measured on the 64x48 LeRobot fixture: 0.67 vs 0.11 ms per frame, same pixels)
        from av.video.reformatter import VideoReformatter  # noqa: PLC0415
        self._reformatter = VideoReformatter()
        self._frames: Optional[Any] = None
        self._last: Optional[tuple[float, np.ndarray]] = None

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:  # pragma: no cover - closing a broken container
            pass

    def _seek(self, t: float) -> None:
        tb = self.stream.time_base
        self.container.seek(max(int(t / tb), 0), stream=self.stream, backward=True, any_frame=False)
        self._frames = self.container.decode(self.stream)
        self._last = None

    def frame_at(self, t: float, tol: float) -> np.ndarray:
        """RGB (H, W, 3) uint8 frame whose presentation time is within ``tol`` of ``t``."""
        av = _av()
        last = self._last
        if last is not None and abs(last[0] - t) <= tol:
            return last[1]
        if self._frames is None or last is None or not (last[0] < t <= last[0] + FORWARD_WINDOW_S):
            self._seek(t)
        try:
            for frame in self._frames:  # type: ignore[union-attr]
                if frame.pts is None:
                    continue
                ft = float(frame.pts * self.stream.time_base)
                if ft < t - tol:
                    continue  # before the target (decoded from the key frame on): skip the conversion
                img = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
                self._last = (ft, img)
                if abs(ft - t) <= tol:
                    return img
                break  # past the target without a frame at it
        except av.error.FFmpegError as exc:
            self._frames, self._last = None, None
            raise VideoError(f"{self.path}: decoding failed near t={t:.4f}s ({type(exc).__name__}: {exc}); "
                             f"expected a decodable frame at that timestamp", file=self.path, timestamp=t) from exc
        got = "no frame after it" if self._last is None or self._last[0] < t - tol else \
            f"the nearest frame at t={self._last[0]:.4f}s"
        self._frames, self._last = None, None
        raise VideoError(f"{self.path}: no frame at t={t:.4f}s (tolerance {tol:.4f}s; found {got}); "
                         f"expected a frame at that timestamp (video shorter than its episode, or "
                         f"frames at other times than from_timestamp + timestamp)", file=self.path, timestamp=t)


class _Cache:
    """Per-process LRU of open decoders."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.open: "collections.OrderedDict[str, _Decoder]" = collections.OrderedDict()

    def get(self, path: str) -> _Decoder:
        if self.pid != os.getpid():  # forked without the hooks below: never free the parent's containers
            _INHERITED.extend(self.open.values())
            self.pid, self.open = os.getpid(), collections.OrderedDict()
        dec = self.open.get(path)
        if dec is None:
            if not os.path.isfile(path):
                raise VideoError(f"{path}: video file is missing; expected an mp4 file", file=path)
            dec = self.open[path] = _Decoder(path)
            while len(self.open) > MAX_OPEN_DECODERS:
                self.open.popitem(last=False)[1].close()
        self.open.move_to_end(path)
        return dec

    def clear(self) -> None:
        if self.pid == os.getpid():
            for dec in self.open.values():
                dec.close()
        self.pid, self.open = os.getpid(), collections.OrderedDict()


_CACHE = _Cache()
#: Decoders of a parent process seen in a child: kept referenced, since freeing them there would
#: join codec threads that do not exist in the child (a hang).
_INHERITED: list = []


def _before_fork() -> None:
    """Close this process's decoders before a fork (the child starts clean; we reopen lazily)."""
    _CACHE.lock.acquire()
    _CACHE.clear()


def _after_fork_in_parent() -> None:
    _CACHE.lock.release()


def _after_fork_in_child() -> None:
    _CACHE.lock = threading.Lock()
    _CACHE.pid, _CACHE.open = os.getpid(), collections.OrderedDict()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def read_frame(path: str, t: float, tol: float) -> np.ndarray:
    """The RGB (H, W, 3) uint8 frame of ``path`` at ``t`` seconds (within ``tol``)."""
    with _CACHE.lock:
        dec = _CACHE.get(os.fspath(path))
        try:
            return dec.frame_at(float(t), float(tol))
        except VideoError:
            raise
        except Exception as exc:  # anything else from the codec layer: name the file
            raise VideoError(f"{path}: decoding failed near t={t:.4f}s ({type(exc).__name__}: {exc}); "
                             f"expected a decodable frame at that timestamp", file=str(path), timestamp=t) from exc


def clear_decoder_cache() -> None:
    """Close every decoder this process opened (tests; after rewriting a file in place)."""
    with _CACHE.lock:
        _CACHE.clear()


def probe_video(path: str) -> dict[str, Any]:
    """Stream facts of a video file: width, height, codec, pix_fmt, fps, frames, duration (s)."""
    av = _av()
    try:
        with av.open(os.fspath(path), "r") as c:
            s = c.streams.video[0]
            dur = float(s.duration * s.time_base) if s.duration is not None else None
            return {"width": s.codec_context.width, "height": s.codec_context.height,
                    "codec": s.codec_context.name, "pix_fmt": s.codec_context.pix_fmt,
                    "fps": float(s.average_rate) if s.average_rate else None,
                    "frames": int(s.frames), "duration": dur}
    except (IndexError, OSError, av.error.FFmpegError) as exc:
        raise VideoError(f"{path}: cannot read as a video ({type(exc).__name__}: {exc}); expected an mp4 "
                         f"file with a video stream", file=str(path)) from exc


class VideoWriter:
    """Encode RGB uint8 frames into one mp4 file; frame ``i`` of the file is shown at ``i / fps``.

    Args:
        codec: an encoder PyAV has (``libx264`` -> h264; ``libsvtav1`` -> AV1; ...).
        crf: constant rate factor (lower = better; ~10 keeps 0/255 masks exact after a 127 threshold).
        gop: key frame interval (small = fast random access; LeRobot uses 2).
    """

    def __init__(self, path: str, fps: int, width: int, height: int, codec: str = "libx264",
                 pix_fmt: str = "yuv420p", crf: int = 23, gop: int = 2):
        av = _av()
        self.path, self.fps, self.width, self.height = path, int(fps), int(width), int(height)
        self.n_frames = 0
        self._tb = fractions.Fraction(1, self.fps)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            self._c = av.open(path, "w")
            self._s = self._c.add_stream(codec, rate=self.fps, options={"g": str(gop), "crf": str(crf)})
        except (av.error.FFmpegError, ValueError, av.codec.codec.UnknownCodecError) as exc:
            raise VideoError(f"{path}: cannot create a {codec} video ({type(exc).__name__}: {exc}); "
                             f"expected an encoder available in PyAV", file=path) from exc
        self._s.width, self._s.height, self._s.pix_fmt = self.width, self.height, pix_fmt
        self.codec = self._s.codec_context.name
        self.pix_fmt = pix_fmt

    def add(self, rgb: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        av = _av()
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise DatasetError(f"{self.path}: frame of shape {rgb.shape} {rgb.dtype}; expected "
                               f"({self.height}, {self.width}, 3) uint8 like the file's first frame")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts, frame.time_base = self.n_frames, self._tb
        for packet in self._s.encode(frame):
            self._c.mux(packet)
        self.n_frames += 1

    def size(self) -> int:
        """Bytes written so far (the encoder may hold a few frames more)."""
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        for packet in self._s.encode():
            self._c.mux(packet)
        self._c.close()

    def abort(self) -> None:
        try:
            self._c.close()
        except Exception:
            pass
