"""Runs from MLflow into one pandas frame: one row per finished training run.

The tracking store pages through the runs and returns params, metrics and tags of every run
in one frame (as ``mlflow.search_runs`` would), so the summary needs no request per run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from latentseg.errors import ConfigError, TrackingError
from latentseg.report.decision import run_metric
from latentseg.report.stats import deduplicate, mark_inert
from latentseg.tracking.store import TrackingStore


@dataclass
class Collected:
    runs: pd.DataFrame  # finished training runs: params.*, metrics.*, tags.*, wall_time_s
    left_out: dict[str, int]  # FAILED / KILLED / RUNNING training runs not in ``runs``
    experiment_ids: list[str]
    # the FAILED and KILLED training runs (params and tags): failures counted per variant
    unfinished: pd.DataFrame = field(default_factory=pd.DataFrame)

    def left_out_line(self) -> str:
        parts = [f"{n} {status}" for status, n in sorted(self.left_out.items()) if n]
        return (
            "Left out: "
            + (", ".join(parts) if parts else "none")
            + " (only FINISHED runs are compared)."
        )


def collect(store, experiment: str | None = None, study: str | None = None) -> Collected:
    """Training runs of an MLflow ``experiment``, or the seed runs of a ``study``, from
    ``store`` (a :class:`~latentseg.tracking.store.TrackingStore`, or an ``MlflowClient``)."""
    if (experiment is None) == (study is None):
        raise ValueError("give exactly one of experiment or study")
    store = TrackingStore.of(store)
    if study is not None:
        parent = store.parent_run(study)
        if parent is None:
            raise TrackingError(
                f"no study named '{study}' in {store.uri} (run `latentseg study` first)"
            )
        ids = [parent.info.experiment_id]
        frame = store.seed_runs(study, ids)
    else:
        experiment_id = store.existing_experiment(experiment)
        if experiment_id is None:
            raise TrackingError(f"no MLflow experiment named '{experiment}' in {store.uri}")
        ids = [experiment_id]
        frame = store.frame(ids)
    if frame.empty:
        return Collected(frame, {}, ids)
    if study is None and "tags.latentseg.run_type" in frame:
        # parents and trial summaries are not training runs
        frame = frame[
            frame["tags.latentseg.run_type"].isna() | (frame["tags.latentseg.run_type"] == "seed")
        ]
    left_out = {
        status: int((frame["status"] == status).sum()) for status in ("FAILED", "KILLED", "RUNNING")
    }
    finished = frame[frame["status"] == "FINISHED"].copy()
    finished["wall_time_s"] = (finished["end_time"] - finished["start_time"]).dt.total_seconds()
    unfinished = frame[frame["status"].isin(["FAILED", "KILLED"])].reset_index(drop=True)
    return Collected(finished.reset_index(drop=True), left_out, ids, unfinished)


@dataclass
class Scored:
    """The runs a report compares, and what preparing them left out."""

    runs: pd.DataFrame  # finished, reporting ``column``; inert params n/a; each seed once
    column: str  # the compared metric, e.g. test_miou
    inert_note: str | None  # the params that do not change the model, if any
    merged: int  # runs that repeat a configuration and seed
    missing: int  # finished runs without ``column``


def scored_runs(collected: Collected, name: str, metric: str) -> Scored:
    """The runs that report the compared metric, each configuration and seed once."""
    runs = collected.runs
    if runs.empty:
        raise ConfigError(
            f"'{name}' has no finished runs to report on. {collected.left_out_line()}"
        )
    column = run_metric(metric)
    if f"metrics.{column}" not in runs:
        raise ConfigError(f"--metric {metric}: the runs report no {column}")
    runs, inert_note = mark_inert(runs)
    runs, merged = deduplicate(runs)
    missing = int(runs[f"metrics.{column}"].isna().sum())
    runs = runs[runs[f"metrics.{column}"].notna()].reset_index(drop=True)
    if runs.empty:
        raise ConfigError(f"'{name}': no finished run reports {column}")
    return Scored(runs, column, inert_note, merged, missing)
