"""A process that latentseg owns (a ``latentseg`` command, the server its study workers are
forked from) ends without the interpreter's teardown of its modules: unloading torch, MLflow
and matplotlib takes 1-2 CPU seconds at every exit, after the work is done and its output is
out.

:func:`end_quickly` registers one ``atexit`` handler, before any other, so that it runs last:
after the interpreter has joined the threads that are not daemons, and after every handler
registered later (MLflow's, multiprocessing's, the temporary folders' finalizers). It shuts
logging down, flushes the standard streams and ends the process with the status that
:func:`set_status` recorded. Without a recorded status (an uncaught exception, ``--help``) or
under a tracer, a profiler or coverage (they write their data at teardown), the interpreter
ends as usual."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys

_status: list[int] = []
_registered: list[bool] = []


def end_quickly(status: int | None = None) -> None:
    """Register the handler (once; call it before anything registers its own), and record
    ``status`` when given (the forkserver, whose exit status nobody reads, gives 0)."""
    if not _registered:
        atexit.register(_end)
        _registered.append(True)
    if status is not None:
        set_status(status)


def set_status(status: int) -> None:
    """The exit status the process ends with (what ``sys.exit`` is about to be given)."""
    _status[:] = [int(status)]


def _end() -> None:
    if not _status or sys.gettrace() or sys.getprofile() or "coverage" in sys.modules:
        return
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed, broken, None
            stream.flush()
    os._exit(_status[0])
