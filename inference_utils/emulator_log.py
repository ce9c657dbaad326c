"""INFO logging of the device emulators (arm, hand): connections and commands are logged as they
come; streamed or polled messages (``movej_canfd`` frames, state reads at the control rate) are
rate-limited: the first one is logged, then one summary line per ``interval_s`` with the count."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional


class RateLimitedLog:
    """Count events per key; log the first at once and then at most one line per ``interval_s``.

    ``log.event("movej_canfd", "joints %s", q)`` -> ``movej_canfd: joints [...]`` the first time,
    then ``movej_canfd: 412 in the last 2.0 s (latest: joints [...])`` every ``interval_s``.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 2.0, level: int = logging.INFO,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.interval_s, self.level, self.clock = logger, float(interval_s), level, clock
        self._lock = threading.Lock()
        self._state: dict[str, list] = {}  # key -> [count since last line, time of last line]

    def event(self, key: str, fmt: str = "", *args) -> None:
        """Record one ``key`` event (details ``fmt % args``, formatted only when logged)."""
        if not self.logger.isEnabledFor(self.level):
            return
        now = self.clock()
        with self._lock:
            state = self._state.get(key)
            if state is None:
                self._state[key] = [0, now]
                first, count, since = True, 1, 0.0
            else:
                state[0] += 1
                if now - state[1] < self.interval_s:
                    return
                first, count, since = False, state[0], now - state[1]
                state[0], state[1] = 0, now
        detail = (fmt % args) if fmt else ""
        if first:
            self.logger.log(self.level, "%s%s (first; repeats summarised every %.0f s)", key,
                            f": {detail}" if detail else "", self.interval_s)
        else:
            self.logger.log(self.level, "%s: %d in the last %.1f s%s", key, count, since,
                            f" (latest: {detail})" if detail else "")

    def reset(self, key: Optional[str] = None) -> None:
        """Forget ``key`` (or every key): its next event is logged at once again."""
        with self._lock:
            if key is None:
                self._state.clear()
            else:
                self._state.pop(key, None)


def configure_cli_logging(level: str = "INFO") -> None:
    """Console logging for an emulator started from the command line."""
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
