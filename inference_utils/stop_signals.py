"""Stop signals for the command-line programs (inference, the device emulators).

A process started in the background by a non-interactive shell, or by some launchers, inherits
SIGINT as *ignored*, and Python then never raises ``KeyboardInterrupt``: a supervisor's SIGINT
would not stop the robot. :func:`install_stop_handlers` makes SIGINT and SIGTERM raise
``KeyboardInterrupt`` in the main thread whatever the process inherited, so every program stops
the same way (hold the arm, disconnect, exit) on Ctrl-C, ``kill -INT`` and ``kill -TERM``.
"""
from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["install_stop_handlers", "restore_handlers"]


def _raise_interrupt(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


def install_stop_handlers() -> dict[int, Any]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt``; returns the previous handlers (empty when
    not called from the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}


def restore_handlers(previous: dict[int, Any]) -> None:
    """Put back the handlers returned by :func:`install_stop_handlers`."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)
