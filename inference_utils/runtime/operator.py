"""Operator interaction: Enter to end an attempt, box selection, confirmations.

Everything here is optional: with ``--non-interactive`` nothing reads the terminal and a manual
box must come from ``--bbox``.
"""
from __future__ import annotations

import os
import select
import sys
import threading
from typing import Optional

import numpy as np


class EnterWatcher:
    """Sets an event when the operator presses Enter (a daemon thread polls stdin).

    Only the event crosses threads. Use ``start()`` when an attempt begins and ``stop()`` when it
    ends, so that the watcher never competes with ``input()`` prompts.
    """

    def __init__(self) -> None:
        self.pressed = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Clear the event and watch stdin (no-op when stdin is not a terminal)."""
        self.pressed.clear()
        self._stop.clear()
        if not sys.stdin or not sys.stdin.isatty():
            return
        self._thread = threading.Thread(target=self._run, name="enter-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([sys.stdin], [], [], 0.1)
            if ready:
                sys.stdin.readline()
                self.pressed.set()
                return

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None


def has_display() -> bool:
    """True when a window can be opened (X11 or Wayland)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def select_box(image_bgr: np.ndarray) -> Optional[list[float]]:
    """Let the operator drag a box on the head image; ``[x1, y1, x2, y2]`` or None if cancelled."""
    import cv2  # noqa: PLC0415

    title = "Drag a box around the target, then press Enter (c = cancel)"
    x, y, w, h = cv2.selectROI(title, image_bgr, showCrosshair=True, fromCenter=False)
    cv2.destroyWindow(title)
    if w < 2 or h < 2:
        return None
    return [float(x), float(y), float(x + w), float(y + h)]


def ask(question: str) -> str:
    """Ask on the terminal; returns the stripped answer ('' on end of input)."""
    try:
        return input(question).strip()
    except EOFError:
        return ""
