"""Per-episode planner log: every request's prompt, reply, parsed result, timings and images.

Layout inside ``episode_dir``::

    planner_log.jsonl              one JSON object per planner request
    images/NNN_<task>_<role>.png   every image sent, NNN = request number

In the log, images inside the prompt are replaced by their PNG file names, so the log is
small and readable while the exact pixels sent are kept next to it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import threading
import time
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

LOG_FILENAME = "planner_log.jsonl"
IMAGE_DIRNAME = "images"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "raw"}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


class PlannerLogger:
    """Writes the planner log of one episode (thread-safe)."""

    def __init__(self, episode_dir: str | Path):
        """Create ``episode_dir`` and its ``images/`` folder."""
        self.episode_dir = Path(episode_dir)
        self.image_dir = self.episode_dir / IMAGE_DIRNAME
        self.image_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.episode_dir / LOG_FILENAME
        self._lock = threading.Lock()
        self._counter = 0

    def next_request_index(self) -> int:
        """Reserve and return the next request number (1-based)."""
        with self._lock:
            self._counter += 1
            return self._counter

    def save_image(self, index: int, task: str, role: str, image_bgr: np.ndarray) -> str:
        """Save a BGR image as ``images/NNN_<task>_<role>.png``; return the path relative to the episode dir."""
        name = f"{index:03d}_{task}_{role}.png"
        path = self.image_dir / name
        if not cv2.imwrite(str(path), np.ascontiguousarray(image_bgr[..., :3])):
            raise OSError(f"could not write planner image {path}")
        return f"{IMAGE_DIRNAME}/{name}"

    def write(
        self,
        index: int,
        task: str,
        prompt: list[dict[str, Any]],
        response: Optional[str],
        result: Any,
        duration_s: float,
        attempts: int,
        error: Optional[str] = None,
        extra: Optional[dict[str, Any]] = None,
    ) -> None:
        """Append one request record to ``planner_log.jsonl``."""
        record = {
            "index": index,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "task": task,
            "prompt": prompt,
            "response": response,
            "result": _jsonable(result),
            "duration_s": round(float(duration_s), 4),
            "attempts": attempts,
            "error": error,
        }
        if extra:
            record.update(_jsonable(extra))
        line = json.dumps(record, ensure_ascii=False)
        with self._lock:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def read(self) -> list[dict[str, Any]]:
        """Read back all records (for tests and tools)."""
        if not self.log_path.exists():
            return []
        with open(self.log_path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
