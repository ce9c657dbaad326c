"""Append-only JSON-lines metric log (one object per line), safe to resume."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class JsonLogger:
    """Write dicts of scalars to ``path``; on resume, lines past ``max_step`` are dropped."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f = None

    def start(self, max_step: int | None = None) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if max_step is not None and os.path.exists(self.path):
            kept = []
            with open(self.path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn last line from a crash
                    if rec.get("global_step", -1) <= max_step:
                        kept.append(line if line.endswith("\n") else line + "\n")
            with open(self.path, "w") as f:
                f.writelines(kept)
        self._f = open(self.path, "a", buffering=1)

    def log(self, data: Dict[str, Any]) -> None:
        self._f.write(json.dumps({k: _plain(v) for k, v in data.items()}) + "\n")

    def stop(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> "JsonLogger":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def read_json_log(path: str) -> list:
    """All records of a JSON-lines log."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
