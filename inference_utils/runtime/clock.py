"""Control clocks and the helper that keeps the control stream alive during slow work.

* :class:`RealClock` -- wall-clock rate limiting (``Rate``): ``tick()`` sleeps until the next
  control period; used with the real robot (and emulators).
* :class:`SimClock` -- ``tick()`` advances the simulator by one control period instead of
  sleeping, so a simulated run is as fast as the CPU allows and fully deterministic.

:func:`call_while_holding` runs slow work (planner requests, controller inference) on a worker
thread while the calling thread keeps the control stream alive at the control rate (reading the
devices so that a dead device is noticed). The only state crossing threads is the worker's
result, handed over through a :class:`concurrent.futures.Future`-like box guarded by an Event.
"""
from __future__ import annotations

import abc
import threading
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class Clock(abc.ABC):
    """Paces the control loop: one :meth:`tick` per control period."""

    #: True when time passes on its own (real robot); False for the simulator.
    realtime: bool = True

    def __init__(self, rate_hz: float) -> None:
        if not rate_hz > 0:
            raise ValueError(f"control rate must be > 0 Hz, got {rate_hz}")
        self.rate_hz = float(rate_hz)
        self.period = 1.0 / self.rate_hz

    @abc.abstractmethod
    def tick(self) -> None:
        """Wait for (or simulate) the end of the current control period."""

    @abc.abstractmethod
    def now(self) -> float:
        """Current time in seconds (wall-clock or simulated)."""


class Rate:
    """Sleep so that successive :meth:`sleep` calls happen ``rate_hz`` times per second.

    Falling behind by more than one period resynchronises instead of bursting.
    """

    def __init__(self, rate_hz: float) -> None:
        self.period = 1.0 / float(rate_hz)
        self._next = time.monotonic() + self.period
        self.overruns = 0

    def sleep(self) -> None:
        """Sleep until the next period boundary."""
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
            self._next += self.period
        else:
            self.overruns += 1
            self._next = time.monotonic() + self.period if delay < -self.period else self._next + self.period


class RealClock(Clock):
    """Wall-clock pacing with :class:`Rate`."""

    realtime = True

    def __init__(self, rate_hz: float) -> None:
        super().__init__(rate_hz)
        self._rate = Rate(rate_hz)

    def tick(self) -> None:
        """Sleep until the next control period."""
        self._rate.sleep()

    def now(self) -> float:
        """Monotonic wall-clock time (s)."""
        return time.monotonic()


class SimClock(Clock):
    """Simulated time: ``tick`` steps the simulator session one control period."""

    realtime = False

    def __init__(self, session: Any) -> None:
        super().__init__(session.control_hz)
        self.session = session

    def tick(self) -> None:
        """Advance the physics by one control period."""
        self.session.tick()

    def now(self) -> float:
        """Simulated time (s)."""
        return self.session.time


def call_while_holding(fn: Callable[[], T], clock: Clock, heartbeat: Callable[[], None],
                       name: str = "work") -> T:
    """Return ``fn()``; on a real-time clock run it on a worker thread and call ``heartbeat()``
    once per control period until it finishes (exceptions of either side propagate).

    On the simulator clock time is frozen while nothing ticks, so ``fn`` simply runs inline.
    """
    if not clock.realtime:
        return fn()
    done = threading.Event()
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=worker, name=f"runtime-{name}", daemon=True)
    thread.start()
    while not done.wait(clock.period):
        heartbeat()
    if "error" in box:
        raise box["error"]
    return box["value"]
