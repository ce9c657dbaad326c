"""SIGINT / SIGTERM raise KeyboardInterrupt once the stop handlers are installed (main thread)."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from inference_utils.stop_signals import install_stop_handlers, restore_handlers


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_raise_keyboard_interrupt_even_if_sigint_was_ignored(sig):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job inherits it
    try:
        previous = install_stop_handlers()
        assert set(previous) == {signal.SIGINT, signal.SIGTERM}
        with pytest.raises(KeyboardInterrupt, match=f"signal {int(sig)}"):
            os.kill(os.getpid(), sig)  # the handler runs as soon as os.kill returns
        restore_handlers(previous)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        restore_handlers(before)


def test_off_the_main_thread_it_does_nothing():
    out = []
    t = threading.Thread(target=lambda: out.append(install_stop_handlers()))
    t.start()
    t.join()
    assert out == [{}]
