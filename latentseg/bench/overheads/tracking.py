"""The tracking section: a training run with full MLflow tracking against the same run
untracked."""

from __future__ import annotations

import statistics
from typing import Any

from latentseg.bench.harness import alternate, repeated
from latentseg.bench.overheads.runs import scratch, tracking_run_config


def bench_tracking(repeats: int = 3, epochs: int = 3, device: str = "cpu") -> dict[str, Any]:
    """The same training run (:func:`tracking_run_config`) with full tracking (params,
    per-epoch metrics, attention images at the first, best and last epoch, checkpoints every
    epoch) and with tracking off, alternated; the best time of each and the overhead. Beside
    that end-to-end difference (seconds apart, noisy): the time the tracked runs themselves
    spent tracking (opening and closing the run, the tracker's hooks)."""
    from latentseg.config import ExperimentConfig
    from latentseg.tracking.run import run_experiment

    spent: list[float] = []
    with scratch() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"

        def train(tracking: bool, epochs: int = epochs) -> None:
            config = ExperimentConfig.model_validate(tracking_run_config(epochs, tracking, device))
            result = run_experiment(config, tracking_uri=uri, progress=False)
            if tracking:
                spent.append(result.tracking_s)

        train(True, epochs=1)  # warm-up: creates the store's schema, fills caches
        spent.clear()
        runs = alternate(
            {
                "untracked": repeated(lambda: train(False)),
                "tracked": repeated(lambda: train(True)),
            },
            windows=repeats,
            steps=1,
            warmup=0,
        )
    tracked, untracked = runs.best["tracked"], runs.best["untracked"]
    return {
        "epochs": epochs,
        "repeats_s": {"tracked": runs.windows["tracked"], "untracked": runs.windows["untracked"]},
        "tracked_s": tracked,
        "untracked_s": untracked,
        "overhead": tracked / untracked - 1,
        "tracking_s": statistics.median(spent),
        "tracking_share": statistics.median(spent) / untracked,
    }


def format_tracking(figures: dict[str, Any]) -> str:
    return (
        f"tracking: {figures['tracked_s']:.1f} s tracked vs {figures['untracked_s']:.1f} s "
        f"untracked ({100 * figures['overhead']:+.1f}%); time spent tracking "
        f"{figures['tracking_s']:.2f} s ({100 * figures['tracking_share']:.1f}%)"
    )
