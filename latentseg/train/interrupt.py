"""Graceful stop on Ctrl-C / SIGTERM: the first signal asks the loop to stop at the next safe
point (after an optimizer step), where it writes a checkpoint; a second Ctrl-C aborts at once."""

from __future__ import annotations

import contextlib
import signal
import threading


class StopSignal:
    """Context manager installing SIGINT/SIGTERM handlers (main thread only).

    Nested stops share what they receive: a signal caught by an inner one (a run inside a
    study's trial) also stops every enclosing one, and an inner one entered after a signal
    starts stopped. The first signal names the stop (a SIGTERM that follows a Ctrl-C, as a
    launch forwards to its workers, does not relabel it); a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}
        self._outer: StopSignal | None = None

    def __call__(self) -> bool:
        return self.received is not None

    def _mark(self, name: str) -> None:
        if self.received is None:
            self.received = name
        if self._outer is not None:
            self._outer._mark(name)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._mark(signal.Signals(signum).name)

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for signal_number in (signal.SIGINT, signal.SIGTERM):
                self._previous[signal_number] = signal.signal(signal_number, self._handle)
            outer = getattr(self._previous[signal.SIGINT], "__self__", None)
            if isinstance(outer, StopSignal):
                self._outer = outer
                self.received = outer.received
            _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        for signal_number, handler in self._previous.items():
            signal.signal(signal_number, handler)
        self._previous.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)


_ACTIVE: list[StopSignal] = []  # the StopSignals in force in this process, innermost last


def stop_requested() -> str | None:
    """The signal that asked this process to stop (``'SIGINT'``, ``'SIGTERM'``), if any: for
    code between runs that must not start new work after one (a study's next trial or seed)."""
    return next((stop.received for stop in reversed(_ACTIVE) if stop.received), None)


@contextlib.contextmanager
def ignore_interrupts():
    """Ignore Ctrl-C / SIGTERM for a short critical section (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        signal_number: signal.signal(signal_number, signal.SIG_IGN)
        for signal_number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signal_number, handler in previous.items():
            signal.signal(signal_number, handler)
