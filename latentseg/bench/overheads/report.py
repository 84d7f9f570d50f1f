"""The report section: ``latentseg report`` over thousands of runs against
``mlflow.search_runs`` alone on the same store."""

from __future__ import annotations

import statistics
from typing import Any

from latentseg.bench.harness import alternate, repeated, stopwatch
from latentseg.bench.overheads.runs import scratch

REPORT_SIZES = (1000, 10_000)  # runs in the store


def bench_report(runs: int, windows: int = 3) -> dict[str, Any]:
    """``latentseg report``'s work (collect from MLflow, statistics, plots, files) over
    ``runs`` finished runs (:mod:`latentseg.tracking.synthetic_runs`) in a fresh SQLite
    store, alternated with ``mlflow.search_runs`` alone on the same store for ``windows``
    windows: the medians of each, and ``write_s``, what writing the runs took."""
    from latentseg.report.collect import collect
    from latentseg.report.render import build
    from latentseg.report.writers import write
    from latentseg.tracking.store import TrackingStore
    from latentseg.tracking.synthetic_runs import write_ablation_runs

    collecting: list[float] = []
    with scratch() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        store = TrackingStore.open(uri)
        experiment_id = store.experiment("scale")
        with stopwatch() as writing:
            write_ablation_runs(uri, experiment_id, runs)

        def report() -> None:
            with stopwatch() as collected_in:
                collected = collect(store, experiment="scale")
            collecting.append(collected_in.wall_s)
            write(build(collected, "scale", store=store), tmp / "report")

        timings = alternate(
            {
                "search_runs": repeated(lambda: store.mlflow_frame([experiment_id])),
                "report": repeated(report),
            },
            windows,
            steps=1,
            warmup=0,
        )
    medians = timings.medians
    return {
        "runs": runs,
        "report_s": medians["report"],
        "search_runs_s": medians["search_runs"],
        "report_to_search_runs": timings.ratio("report", "search_runs"),
        "collect_s": statistics.median(collecting),
        "windows": timings.windows,
        "write_s": writing.wall_s,
    }


def format_report(figures: dict[str, Any]) -> str:
    return (
        f"report: {figures['runs']} runs in {figures['report_s']:.1f} s (collect "
        f"{figures['collect_s']:.1f} s); mlflow.search_runs alone {figures['search_runs_s']:.1f} s "
        f"({figures['report_to_search_runs']:.2f}x)"
    )
