"""The timing harness every benchmark uses: contenders alternated window by window after a
warm-up, medians and their ratios, and a stopwatch for whole runs and child processes.

Alternating is what makes a ratio trustworthy on a shared machine: a busy moment slows
the contenders of the same window alike instead of one of them. The harness knows nothing
of models or MLflow; it times callables.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# ``run(steps)`` runs ``steps`` steps of a contender and returns the seconds they took
Contender = Callable[[int], float]


@dataclass(frozen=True)
class Timings:
    """Seconds per step of each contender, one value per timed window, in the order run."""

    windows: dict[str, list[float]]

    @property
    def medians(self) -> dict[str, float]:
        """Median seconds per step of each contender: one slow window does not move it."""
        return {name: statistics.median(values) for name, values in self.windows.items()}

    @property
    def best(self) -> dict[str, float]:
        """Fastest window of each contender: noise on a shared machine only adds time, so for
        a few long windows (whole training runs) the best is the steadiest estimate."""
        return {name: min(values) for name, values in self.windows.items()}

    def ratio(self, slower: str, faster: str) -> float:
        """How many times longer a step of ``slower`` takes than one of ``faster`` (the ratio
        of their medians): ``ratio("reference", "fast")`` is the fast path's speed-up."""
        medians = self.medians
        return medians[slower] / medians[faster]


def alternate(
    contenders: dict[str, Contender], windows: int, steps: int, warmup: int = 3
) -> Timings:
    """Warm each contender up with ``warmup`` steps, then run ``windows`` rounds in which
    every contender, in the order given, runs one timed window of ``steps`` steps."""
    for run in contenders.values():
        if warmup:
            run(warmup)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(windows):
        for name, run in contenders.items():
            times[name].append(run(steps) / steps)
    return Timings(times)


def repeated(step: Callable[[], Any], synchronize: Callable[[], Any] | None = None) -> Contender:
    """``step`` (one step, its result ignored) as a contender for :func:`alternate`.
    ``synchronize`` (``torch.cuda.synchronize`` on a GPU) waits for the work queued so far:
    it runs before the clock starts and before it stops, so that an accelerator's
    asynchronous work is counted in the window that queued it."""

    def run(steps: int) -> float:
        if synchronize:
            synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        if synchronize:
            synchronize()
        return time.perf_counter() - started

    return run


@dataclass
class Elapsed:
    """What a :func:`stopwatch` block took; filled in when the block ends."""

    wall_s: float = 0.0
    # CPU seconds of this process and of the child processes that ended (were waited for)
    # inside the block, user and system time together
    cpu_s: float = 0.0


def _cpu_seconds() -> float:
    usages = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return sum(usage.ru_utime + usage.ru_stime for usage in usages)


@contextlib.contextmanager
def stopwatch() -> Iterator[Elapsed]:
    """``with stopwatch() as elapsed: ...`` then ``elapsed.wall_s`` and ``elapsed.cpu_s``:
    the wall time of the block, and the CPU time it used here and in its child processes."""
    elapsed = Elapsed()
    wall, cpu = time.perf_counter(), _cpu_seconds()
    try:
        yield elapsed
    finally:
        elapsed.wall_s = time.perf_counter() - wall
        elapsed.cpu_s = _cpu_seconds() - cpu
