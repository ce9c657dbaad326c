"""Live view with rerun (``--viz rerun``): cameras, mask, box, state, the predicted chunk and the
planner's messages, streamed per control step as LeRobot does (``pip install -e .[viz]``).

Where the stream goes (:func:`resolve_sink`):

* ``--viz-connect ADDR``: a running viewer (``rerun`` on another machine; ``ADDR`` is
  ``HOST:PORT`` or a full ``rerun+http://HOST:PORT/proxy`` URL);
* ``--viz-save PATH``: an ``.rrd`` file (open it later with ``rerun PATH``);
* neither: a viewer is spawned when a display exists (``DISPLAY`` / ``WAYLAND_DISPLAY``),
  otherwise the stream is saved to ``live_view.rrd`` in the run's log directory.

Entity paths: ``camera/head`` (image), ``camera/head/mask`` (segmentation), ``camera/head/box``
(2-D box), ``camera/wrist``, ``state`` (one scalar series per joint), ``chunk`` (the predicted
chunk: one line per action dimension over the horizon), ``planner`` (text log). The timeline is
``step`` (a sequence number per control step).

rerun is imported only when a :class:`RerunViz` is made, so nothing is paid without the flag; the
default everywhere is :class:`NullViz`, which does nothing.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

VIZ_CHOICES = ("none", "rerun")
DEFAULT_RRD_NAME = "live_view.rrd"


class NullViz:
    """The default: no live view (every method does nothing)."""

    enabled = False
    target = None

    def log_step(self, step: int, head_bgr: Any = None, wrist_bgr: Any = None, mask: Any = None,
                 box: Any = None, state: Any = None, chunk: Any = None) -> None:
        """Nothing."""

    def log_planner(self, role: str, text: str) -> None:
        """Nothing."""

    def close(self) -> None:
        """Nothing."""


def has_display() -> bool:
    """True when a viewer window can be opened (X11 or Wayland)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def resolve_sink(save: Optional[str] = None, connect: Optional[str] = None,
                 default_dir: Optional[str | Path] = None, display: Optional[bool] = None) -> tuple[str, Optional[str]]:
    """``(mode, target)``: ``("connect", url)``, ``("save", path)`` or ``("spawn", None)``."""
    if connect:
        url = str(connect)
        if "://" not in url:
            url = f"rerun+http://{url}/proxy"
        return "connect", url
    if save:
        return "save", str(save)
    if display if display is not None else has_display():
        return "spawn", None
    return "save", str(Path(default_dir or ".") / DEFAULT_RRD_NAME)


def mask_box(mask: np.ndarray) -> Optional[list[float]]:
    """The bounding box ``[x1, y1, x2, y2]`` of a boolean mask, or None when it is empty."""
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


class RerunViz:
    """Streams one run to rerun through its own recording stream (several may coexist).

    Args:
        app_id: the viewer's application id (``dexgraspvla`` / ``dexgraspvla_sim_eval``).
        mode: ``spawn``, ``save`` or ``connect`` (see :func:`resolve_sink`).
        target: the ``.rrd`` path (save) or the viewer URL (connect).
        joint_names: names of the state / action dimensions (default ``j0`` ... ``jN``).
        jpeg_quality: camera images are JPEG-compressed at this quality (0 = raw pixels).
    """

    enabled = True

    def __init__(self, app_id: str = "dexgraspvla", mode: str = "spawn", target: Optional[str] = None,
                 joint_names: Optional[Sequence[str]] = None, jpeg_quality: int = 80) -> None:
        try:
            import rerun as rr  # noqa: PLC0415 - only with --viz rerun
        except ImportError as exc:
            raise ImportError("--viz rerun needs rerun-sdk: pip install 'rerun-sdk>=0.23' "
                              "(or pip install -e '.[viz]')") from exc
        self.rr, self.mode, self.target = rr, mode, target
        self.joint_names = list(joint_names) if joint_names is not None else None
        self.jpeg_quality = int(jpeg_quality)
        self.rec = rr.RecordingStream(app_id)
        if mode == "save":
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self.rec.save(target)
        elif mode == "connect":
            self.rec.connect_grpc(target)
        elif mode == "spawn":
            self.rec.spawn()
        else:
            raise ValueError(f"viz mode: expected spawn, save or connect, got {mode!r}")
        self._series_named = False
        self._closed = False

    # ------------------------------------------------------------------ helpers
    def _image(self, bgr: np.ndarray) -> Any:
        rgb = np.ascontiguousarray(np.asarray(bgr)[:, :, :3][:, :, ::-1])
        image = self.rr.Image(rgb)
        if self.jpeg_quality > 0:
            try:
                return image.compress(jpeg_quality=self.jpeg_quality)
            except Exception:  # noqa: BLE001 - no Pillow: raw pixels
                return image
        return image

    def _name_series(self, n: int) -> None:
        names = self.joint_names if self.joint_names and len(self.joint_names) == n else [f"j{i}" for i in range(n)]
        self.rec.log("state", self.rr.SeriesLines(names=names), static=True)
        self._series_named = True

    # ------------------------------------------------------------------ API
    def _failed(self, what: str, exc: BaseException) -> None:
        """A viewer problem never stops the robot: log once, then stop streaming."""
        logger.warning("live view: %s failed (%s: %s); streaming stops, the run goes on",
                       what, type(exc).__name__, exc)
        self.enabled = False

    def log_step(self, step: int, head_bgr: Any = None, wrist_bgr: Any = None, mask: Any = None,
                 box: Any = None, state: Any = None, chunk: Any = None) -> None:
        """One control step: head / wrist BGR images, bool (H, W) mask, box ``[x1, y1, x2, y2]`` in
        head pixels, joint state (D,), and (when a new one was predicted) the chunk (horizon, D).
        Errors are logged and end the streaming, never the run."""
        if not self.enabled:
            return
        try:
            self._log_step(step, head_bgr, wrist_bgr, mask, box, state, chunk)
        except Exception as exc:  # noqa: BLE001 - visualisation must not stop the robot
            self._failed("log_step", exc)

    def _log_step(self, step: int, head_bgr: Any, wrist_bgr: Any, mask: Any, box: Any, state: Any,
                  chunk: Any) -> None:
        rr, rec = self.rr, self.rec
        rec.set_time("step", sequence=int(step))
        if head_bgr is not None:
            rec.log("camera/head", self._image(head_bgr))
        if wrist_bgr is not None:
            rec.log("camera/wrist", self._image(wrist_bgr))
        if mask is not None:
            rec.log("camera/head/mask", rr.SegmentationImage(np.asarray(mask).astype(np.uint8)))
        if box is not None:
            x1, y1, x2, y2 = (float(v) for v in box)
            rec.log("camera/head/box", rr.Boxes2D(array=[x1, y1, x2, y2], array_format=rr.Box2DFormat.XYXY,
                                                  colors=[(255, 64, 64)]))
        if state is not None:
            values = np.asarray(state, np.float64).reshape(-1)
            if not self._series_named:
                self._name_series(len(values))
            rec.log("state", rr.Scalars(values))
        if chunk is not None:
            c = np.asarray(chunk, np.float32)
            t = np.arange(len(c), dtype=np.float32)
            strips = [np.stack([t, c[:, j]], axis=1) for j in range(c.shape[1])]
            rec.log("chunk", rr.LineStrips2D(strips))

    def log_planner(self, role: str, text: str) -> None:
        """A planner request's result (``role`` = the task, e.g. ``predict_bbox``)."""
        if not self.enabled:
            return
        try:
            self.rec.log("planner", self.rr.TextLog(f"{role}: {text}", level="INFO"))
        except Exception as exc:  # noqa: BLE001 - visualisation must not stop the robot
            self._failed("log_planner", exc)

    def close(self) -> None:
        """Flush the stream (the ``.rrd`` file is complete afterwards)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.rec.flush()
        finally:
            self.rec.disconnect()


def make_viz(kind: Optional[str], save: Optional[str] = None, connect: Optional[str] = None,
             default_dir: Optional[str | Path] = None, app_id: str = "dexgraspvla",
             joint_names: Optional[Sequence[str]] = None) -> Any:
    """:class:`NullViz` for ``kind`` None / ``none``; a :class:`RerunViz` for ``rerun``."""
    kind = (kind or "none").strip().lower()
    if kind == "none":
        return NullViz()
    if kind != "rerun":
        raise ValueError(f"--viz: expected one of {', '.join(VIZ_CHOICES)}, got {kind!r}")
    mode, target = resolve_sink(save, connect, default_dir)
    return RerunViz(app_id, mode, target, joint_names=joint_names)
