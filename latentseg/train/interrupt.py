"""Graceful stop on Ctrl-C / SIGTERM: the first signal asks the loop to stop at the next safe
point (after an optimizer step), where it writes a checkpoint; a second Ctrl-C aborts at once."""

from __future__ import annotations

import contextlib
import signal
import threading


class StopSignal:
    """Context manager installing SIGINT/SIGTERM handlers (main thread only)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.received is not None

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@contextlib.contextmanager
def ignore_interrupts():
    """Ignore Ctrl-C / SIGTERM for a short critical section (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
