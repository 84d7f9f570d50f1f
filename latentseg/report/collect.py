"""Runs from MLflow into one pandas frame: one row per finished training run.

``mlflow.search_runs`` pages through the store itself and returns params, metrics and tags
of every run in one frame, so the summary needs no request per run.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from latentseg.errors import TrackingError
from latentseg.tracking.store import quote


@dataclass
class Collected:
    runs: pd.DataFrame  # finished training runs: params.*, metrics.*, tags.*, wall_time_s
    left_out: dict[str, int]  # FAILED / KILLED / RUNNING training runs not in ``runs``
    experiment_ids: list[str]

    def left_out_line(self) -> str:
        parts = [f"{n} {status}" for status, n in sorted(self.left_out.items()) if n]
        return (
            "Left out: "
            + (", ".join(parts) if parts else "none")
            + " (only FINISHED runs are compared)."
        )


def collect(client, experiment: str | None = None, study: str | None = None) -> Collected:
    """Training runs of an MLflow ``experiment``, or the seed runs of a ``study``."""
    import mlflow

    if (experiment is None) == (study is None):
        raise ValueError("give exactly one of experiment or study")
    if study is not None:
        found = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.`latentseg.study` = {quote(study)} and tags.`latentseg.run_type` = 'study'",
            max_results=1,
        )
        if not found:
            raise TrackingError(
                f"no study named '{study}' in {client.tracking_uri} (run `latentseg study` first)"
            )
        ids = [found[0].info.experiment_id]
        filter_string = (
            f"tags.`latentseg.study` = {quote(study)} and tags.`latentseg.run_type` = 'seed'"
        )
    else:
        found_experiment = client.get_experiment_by_name(experiment)
        if found_experiment is None:
            raise TrackingError(
                f"no MLflow experiment named '{experiment}' in {client.tracking_uri}"
            )
        ids = [found_experiment.experiment_id]
        filter_string = ""
    frame = mlflow.search_runs(
        experiment_ids=ids, filter_string=filter_string, output_format="pandas"
    )
    if frame.empty:
        return Collected(frame, {}, ids)
    if (
        study is None and "tags.latentseg.run_type" in frame
    ):  # parents and trial summaries are not training runs
        frame = frame[
            frame["tags.latentseg.run_type"].isna() | (frame["tags.latentseg.run_type"] == "seed")
        ]
    left_out = {
        status: int((frame["status"] == status).sum()) for status in ("FAILED", "KILLED", "RUNNING")
    }
    finished = frame[frame["status"] == "FINISHED"].copy()
    finished["wall_time_s"] = (finished["end_time"] - finished["start_time"]).dt.total_seconds()
    return Collected(finished.reset_index(drop=True), left_out, ids)


def latest_study_run(client, experiment_ids: list[str], study: str):
    """The latest parent run of ``study`` (its spec's params are logged there), or None."""
    parents = client.search_runs(
        experiment_ids,
        filter_string=f"tags.`latentseg.study` = {quote(study)} and tags.`latentseg.run_type` = 'study'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return parents[0] if parents else None


def metric_histories(client, run_ids: list[str], key: str, threads: int = 8) -> pd.DataFrame:
    """``run_id, step, value`` of ``key`` for each run, fetched concurrently (one request a run)."""
    from concurrent.futures import ThreadPoolExecutor

    def fetch(run_id: str) -> list[tuple[str, int, float]]:
        return [(run_id, m.step, m.value) for m in client.get_metric_history(run_id, key)]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        rows = [row for rows in pool.map(fetch, run_ids) for row in rows]
    return pd.DataFrame(rows, columns=["run_id", "step", "value"])


def download_artifacts(client, run_id: str, paths: list[str], folder) -> list:
    """Local copies of a run's artifacts (skipping any that are missing)."""
    import os

    from mlflow.exceptions import MlflowException

    os.environ.setdefault(
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"
    )  # a report, not a download UI
    local = []
    for path in paths:
        try:
            local.append(client.download_artifacts(run_id, path, str(folder)))
        except (MlflowException, OSError):
            continue
    return local
