"""Deployment data (``--save-deployment-data``): one HDF5 file and one MP4 per grasp attempt.

HDF5 datasets (T = executed control steps of the attempt)::

    right_cam_img  uint8   (T, H, W, 3)   wrist image, BGR
    rgbm           uint8   (T, H, W, 4)   head image BGR + target mask (0/255)
    state          float32 (T, 13)        normalised arm joints + hand, before the action
    action         float32 (T, 13)        the action executed at that step

The MP4 shows ``wrist | head | mask`` side by side at the control rate; steps recorded with a
``caption`` (agent=dexvla: the reasoning of the chunk) get a text band on top of the frame. Files are written by a
background thread fed through a bounded queue, so encoding never stalls the control loop (the
queue applies back-pressure if the disk cannot keep up).
"""
from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np

_STOP = object()


class _AttemptWriter:
    """Writes one attempt's HDF5 and MP4 incrementally (used by the writer thread only)."""

    def __init__(self, directory: Path, name: str, fps: float) -> None:
        import h5py  # noqa: PLC0415

        self.h5_path = directory / f"{name}.hdf5"
        self.mp4_path = directory / f"{name}.mp4"
        self.file = h5py.File(self.h5_path, "w")
        self.fps = fps
        self.video = None
        self.n = 0

    def _dataset(self, key: str, sample: np.ndarray) -> Any:
        if key not in self.file:
            self.file.create_dataset(key, shape=(0, *sample.shape), maxshape=(None, *sample.shape),
                                     dtype=sample.dtype, chunks=(1, *sample.shape),
                                     compression="lzf" if sample.ndim >= 2 else None)
        return self.file[key]

    def add(self, wrist: np.ndarray, rgbm: np.ndarray, state: np.ndarray, action: np.ndarray,
            caption: Optional[str] = None) -> None:
        for key, value in (("right_cam_img", wrist), ("rgbm", rgbm), ("state", state), ("action", action)):
            ds = self._dataset(key, value)
            ds.resize(self.n + 1, axis=0)
            ds[self.n] = value
        self.n += 1
        mask_bgr = np.zeros_like(wrist)                                   # (H, W, 3)
        mask_bgr[rgbm[..., 3] > 0] = (0, 255, 0)
        head = rgbm[..., :3]
        if head.shape != wrist.shape:  # different resolutions: letterbox to the wrist size
            import cv2  # noqa: PLC0415

            head = cv2.resize(head, (wrist.shape[1], wrist.shape[0]))
            mask_bgr = cv2.resize(mask_bgr, (wrist.shape[1], wrist.shape[0]), interpolation=cv2.INTER_NEAREST)
        frame = np.ascontiguousarray(np.hstack([wrist, head, mask_bgr]))  # (H, 3W, 3) BGR
        if caption is not None:
            frame = caption_band(frame, caption)                          # (H + band, 3W, 3) BGR
        if self.video is None:
            from inference_utils.video import Mp4Writer  # noqa: PLC0415

            self.video = Mp4Writer(self.mp4_path, self.fps, macro_block_size=1)  # BGR frames
        self.video.append(frame)

    def close(self) -> None:
        self.file.attrs["frames"] = self.n
        self.file.close()
        if self.video is not None:
            self.video.close()


CAPTION_BAND_PX = 24  # per 960 frame columns; a multiple of 8 (H.264 frame sizes stay aligned)


def caption_band(frame: np.ndarray, text: str) -> np.ndarray:
    """``frame`` (H, W, 3) with a black band on top carrying ``text`` in white: ``CAPTION_BAND_PX``
    rows per 960 columns (at least one band; 48 rows for three 640-wide views), text shrunk to fit."""
    import cv2  # noqa: PLC0415

    w = frame.shape[1]
    units = max(1, round(w / 960))
    band = np.zeros((CAPTION_BAND_PX * units, w, 3), dtype=np.uint8)
    scale = 0.4 * units
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if tw > w - 8:
        scale *= (w - 8) / tw
    cv2.putText(band, text, (4 * units, (CAPTION_BAND_PX - 8) * units), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), units, cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate([band, frame], axis=0))


class DeploymentRecorder:
    """Queue-fed writer of per-attempt deployment data.

    Args:
        directory: where the files go (created on first use).
        fps: video frame rate (the control rate).
        log: logger for file notices.
    """

    def __init__(self, directory: str | Path, fps: float = 20.0, log: Optional[logging.Logger] = None,
                 max_queue: int = 128) -> None:
        self.directory = Path(directory)
        self.fps = float(fps)
        self.log = log or logging.getLogger(__name__)
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._error_lock = threading.Lock()
        self._error: Optional[BaseException] = None
        self.files: list[Path] = []
        self._thread = threading.Thread(target=self._run, name="deployment-recorder", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        with self._error_lock:
            error = self._error
        if error is not None:
            raise RuntimeError(f"deployment data writer failed: {error}") from error

    def start_attempt(self, name: str) -> None:
        """Begin the files of attempt ``name`` (e.g. ``attempt_000``)."""
        self._check()
        self._queue.put(("open", name))

    def add(self, wrist: np.ndarray, rgbm: np.ndarray, state: np.ndarray, action: np.ndarray,
            caption: Optional[str] = None) -> None:
        """Queue one control step (arrays are copied); ``caption``: text drawn on the video frame."""
        self._check()
        self._queue.put(("frame", (np.array(wrist, np.uint8), np.array(rgbm, np.uint8),
                                   np.asarray(state, np.float32).copy(), np.asarray(action, np.float32).copy(),
                                   caption)))

    def end_attempt(self) -> None:
        """Finish the current attempt's files."""
        self._check()
        self._queue.put(("close", None))

    def close(self) -> None:
        """Flush everything, stop the writer thread; raises if writing failed."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=120)
        self._check()

    def _run(self) -> None:
        writer: Optional[_AttemptWriter] = None
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                kind, payload = item
                if kind == "open":
                    if writer is not None:
                        writer.close()
                    self.directory.mkdir(parents=True, exist_ok=True)
                    writer = _AttemptWriter(self.directory, payload, self.fps)
                    self.files += [writer.h5_path, writer.mp4_path]
                elif kind == "frame" and writer is not None:
                    writer.add(*payload)
                elif kind == "close" and writer is not None:
                    writer.close()
                    self.log.info("deployment data: %s (%d frames)", writer.h5_path.name, writer.n)
                    writer = None
        except BaseException as exc:  # noqa: BLE001 - surfaced to the loop by _check()
            with self._error_lock:
                self._error = exc
            while True:  # drain so that producers never block on a dead writer
                try:
                    if self._queue.get(timeout=0.5) is _STOP:
                        break
                except queue.Empty:
                    break
        finally:
            if writer is not None:
                try:
                    writer.close()
                except Exception:  # noqa: BLE001
                    pass
