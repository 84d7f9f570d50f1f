"""The timing harness every benchmark relies on (``latentseg.bench.harness``): contenders take
turns after a warm-up, a median shrugs off one slow window, the ratio of two workloads is the
ratio of their costs, and the stopwatch counts the CPU of the processes it waited for. Cheap:
no training, no MLflow."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from latentseg.bench.harness import Timings, alternate, repeated, stopwatch


def scripted(durations: list[float], calls: list[tuple[str, int]], name: str):
    """A contender whose windows "take" ``durations`` seconds per step in turn (warm-up
    first), recording each call; no clock involved."""
    remaining = iter(durations)

    def run(steps: int) -> float:
        calls.append((name, steps))
        return next(remaining) * steps

    return run


def test_contenders_take_turns_window_by_window_after_their_warm_up():
    calls: list[tuple[str, int]] = []
    contenders = {name: scripted([9.0] + [1.0] * 3, calls, name) for name in ("a", "b")}
    timings = alternate(contenders, windows=3, steps=4, warmup=2)
    assert calls == [("a", 2), ("b", 2)] + [("a", 4), ("b", 4)] * 3
    # the warm-up's slow steps are not among the timed windows
    assert timings.windows == {"a": [1.0, 1.0, 1.0], "b": [1.0, 1.0, 1.0]}


def test_the_median_ignores_one_slow_window_that_the_mean_would_not():
    calls: list[tuple[str, int]] = []
    slow_once = [1.0, 1.0, 1.0, 40.0, 1.0, 1.0]  # warm-up, then a busy moment in window 3
    timings = alternate(
        {"fast": scripted(slow_once, calls, "fast"), "slow": scripted([2.0] * 6, calls, "slow")},
        windows=5,
        steps=3,
    )
    assert timings.windows["fast"] == [1.0, 1.0, 40.0, 1.0, 1.0]
    assert timings.medians == {"fast": 1.0, "slow": 2.0}
    assert timings.best == {"fast": 1.0, "slow": 2.0}
    assert timings.ratio("slow", "fast") == 2.0  # the mean's ratio would be 2 / 8.8


def test_a_workload_twice_as_long_measures_near_twice_when_alternated():
    # sleeping, not computing, so that other processes on a busy machine do not skew it
    timings = alternate(
        {
            "long": repeated(lambda: time.sleep(0.04)),
            "short": repeated(lambda: time.sleep(0.02)),
        },
        windows=5,
        steps=2,
        warmup=1,
    )
    assert timings.ratio("long", "short") == pytest.approx(2, rel=0.2)
    assert timings.medians["short"] == pytest.approx(0.02, rel=0.5)


def test_repeated_runs_its_step_as_many_times_as_asked():
    count = []
    run = repeated(lambda: count.append(1))
    assert run(7) >= 0 and len(count) == 7


def test_a_window_waits_for_queued_work_before_and_after_its_steps():
    """On a GPU a step only queues work: the window waits for it (``synchronize``) before
    the clock starts and before it stops, so the queued work counts where it was queued."""
    events = []

    def synchronize():
        events.append("synchronize")
        time.sleep(0.05)  # the work queued by the steps, finishing

    run = repeated(lambda: events.append("step"), synchronize=synchronize)
    assert run(2) >= 0.05
    assert events == ["synchronize", "step", "step", "synchronize"]


def test_a_ratio_names_the_slower_contender_first():
    timings = Timings({"reference": [3.0, 3.0, 3.0], "fast": [1.0, 1.5, 1.0]})
    assert timings.ratio("reference", "fast") == 3.0  # the fast path's speed-up
    assert timings.ratio("fast", "reference") == pytest.approx(1 / 3)


def test_the_stopwatch_counts_the_cpu_of_a_child_process_it_waited_for():
    # the child burns 0.3 s of CPU however long a busy machine makes that take
    burn = "import time\nwhile time.process_time() < 0.3: pass"
    with stopwatch() as elapsed:
        subprocess.run([sys.executable, "-c", burn], check=True)
    assert elapsed.cpu_s >= 0.3
    assert elapsed.wall_s >= 0.3 * 0.9  # one core at most for a single thread


def test_the_stopwatch_measures_wall_time_without_counting_sleep_as_cpu():
    with stopwatch() as elapsed:
        time.sleep(0.2)
    assert elapsed.wall_s >= 0.2
    assert elapsed.cpu_s < 0.1


def test_the_isa_read_from_the_cpu_agrees_with_the_one_torch_dispatches_to():
    import torch

    from latentseg.bench.machine import cpu_isa

    dispatched = torch.backends.cpu.get_cpu_capability()
    if dispatched not in ("AVX2", "AVX512"):
        pytest.skip(f"torch dispatches to {dispatched} here")
    # torch dispatches to AVX-512 only where the CPU has it, and may stay on AVX2 where it does
    allowed = {"AVX512": {"AVX-512"}, "AVX2": {"AVX2", "AVX-512"}}[dispatched]
    assert cpu_isa() in allowed


def test_the_harness_imports_nothing_of_latentseg():
    # so that every benchmark, in the package or in benchmarks/, can time with it
    from tests.helpers_imports import import_graph

    graph = import_graph()
    assert graph["latentseg.bench.harness"] == set()
    bench = {module for module in graph if module.startswith("latentseg.bench")}
    assert {m for m in bench if "latentseg.bench.harness" in graph[m]} >= {
        "latentseg.bench.machine",
        "latentseg.bench.model_speed",
        "latentseg.bench.overheads.data",
        "latentseg.bench.overheads.report",
    }
