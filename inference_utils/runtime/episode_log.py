"""Per-run log directory: ``run.log`` (also printed in colour with ``rich``), stage images,
box and mask overlays, timings and JSON records.

Layout of ``<root>/<YYYYmmdd_HHMMSS>_<exp_name>/``::

    run.log             everything logged during the run
    images/NNN_<stage>.png   camera images at each stage, box and mask overlays
    planner/            the planner client's request log (prompts, replies, images sent)
    attention_maps/     controller attention maps (--gen-attn-map)
    deployment/         HDF5 + MP4 per attempt (--save-deployment-data)
    timings.json        duration of every timed step
    summary.json        the run summary
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

_RUN_IDS = itertools.count()
BOX_COLOUR_BGR = (50, 50, 220)
MASK_COLOUR_BGR = np.array([255, 128, 25], dtype=np.float32)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def box_overlay(image_bgr: np.ndarray, box: Sequence[float], label: str = "") -> np.ndarray:
    """Copy of ``image_bgr`` (H, W, 3) with the box [x1, y1, x2, y2] (and label) drawn."""
    out = image_bgr.copy()
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), BOX_COLOUR_BGR, 2)
    if label:
        cv2.putText(out, label[:40], (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, BOX_COLOUR_BGR, 1,
                    cv2.LINE_AA)
    return out


def mask_overlay(image_bgr: np.ndarray, mask: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Copy of ``image_bgr`` (H, W, 3) with the bool mask (H, W) tinted and outlined."""
    out = image_bgr.astype(np.float32)
    m = np.asarray(mask, bool)
    out[m] = (1 - alpha) * out[m] + alpha * MASK_COLOUR_BGR
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


class EpisodeLog:
    """Owns one run's log directory and its logger.

    Args:
        root: parent directory of run directories (e.g. ``logs``).
        exp_name: suffix of the run directory name.
        console: also print log records to the terminal through ``rich``.
    """

    def __init__(self, root: str | Path, exp_name: str = "run", console: bool = True) -> None:
        stamp = time.strftime("%Y%m%d_%H%M%S")
        base = Path(root) / f"{stamp}_{exp_name}"
        path, n = base, 1
        while path.exists():
            path, n = Path(f"{base}_{n}"), n + 1
        self.dir = path
        self.images_dir = self.dir / "images"
        self.planner_dir = self.dir / "planner"
        self.attention_dir = self.dir / "attention_maps"
        self.deployment_dir = self.dir / "deployment"
        self.images_dir.mkdir(parents=True)
        self._image_index = itertools.count()
        self.timings: list[dict[str, Any]] = []
        self.logger = logging.getLogger(f"dexgraspvla.run.{next(_RUN_IDS)}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        file_handler = logging.FileHandler(self.dir / "run.log", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)-7s %(message)s",
                                                    "%Y-%m-%d %H:%M:%S"))
        self._handlers: list[logging.Handler] = [file_handler]
        if console:
            from rich.console import Console  # noqa: PLC0415
            from rich.logging import RichHandler  # noqa: PLC0415

            self._handlers.append(RichHandler(console=Console(stderr=True), show_path=False, markup=False,
                                              rich_tracebacks=False, log_time_format="%H:%M:%S"))
        for handler in self._handlers:
            self.logger.addHandler(handler)

    # ------------------------------------------------------------------ files
    def save_image(self, stage: str, image_bgr: np.ndarray) -> Path:
        """Write ``images/NNN_<stage>.png`` (BGR uint8 (H, W, 3)); returns the path."""
        path = self.images_dir / f"{next(self._image_index):03d}_{stage}.png"
        if not cv2.imwrite(str(path), image_bgr):
            raise OSError(f"could not write {path}")
        self.logger.info("saved image %s", path.name)
        return path

    def save_box(self, stage: str, image_bgr: np.ndarray, box: Sequence[float], label: str = "") -> Path:
        """Write the head image with the box drawn."""
        return self.save_image(stage, box_overlay(image_bgr, box, label))

    def save_mask(self, stage: str, image_bgr: np.ndarray, mask: np.ndarray) -> Path:
        """Write the head image with the mask tinted."""
        return self.save_image(stage, mask_overlay(image_bgr, mask))

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``<name>`` (JSON, indented) in the run directory."""
        path = self.dir / name
        path.write_text(json.dumps(_jsonable(obj), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    # ------------------------------------------------------------------ timing
    @contextlib.contextmanager
    def timed(self, name: str, **extra: Any) -> Iterator[None]:
        """Log and record how long the block takes (wall clock)."""
        start = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            seconds = time.perf_counter() - start
            self.timings.append({"name": name, "seconds": round(seconds, 4), "ok": ok, **extra})
            self.logger.info("%s took %.3f s%s", name, seconds, "" if ok else " (failed)")

    def close(self) -> None:
        """Write ``timings.json`` and detach the log handlers."""
        try:
            self.write_json("timings.json", self.timings)
        finally:
            for handler in self._handlers:
                self.logger.removeHandler(handler)
                handler.close()
