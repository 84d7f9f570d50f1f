"""The synthetic runs the report benchmarks read: finished seed runs that cover the
ablation grid, with histories, the same for the same seed."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from latentseg.tracking.store import TrackingStore, connect
from latentseg.tracking.synthetic_runs import (
    EPOCHS,
    GRID,
    log_ablation_runs,
    write_ablation_runs,
)

AXES = ("model.num_latents", "model.num_heads", "model.expert_attention")


def test_synthetic_runs_are_finished_seed_runs_covering_the_grid(tracking_uri):
    client = connect(tracking_uri)
    experiment_id = client.create_experiment("scale")
    run_ids = log_ablation_runs(client, experiment_id, runs=len(GRID) + 2)
    runs = client.search_runs([experiment_id], max_results=1000)
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    assert {(r.info.status, r.data.tags["latentseg.run_type"]) for r in runs} == {
        ("FINISHED", "seed")
    }
    points = {tuple(r.data.params[axis] for axis in AXES) for r in runs}
    assert len(points) == len(GRID)
    assert Counter(r.data.params["train.seed"] for r in runs) == {"0": len(GRID), "1": 2}
    for run in runs:  # what the report compares, and the history its plots draw
        assert {"best_val_miou", "test_miou", "best_epoch"} <= set(run.data.metrics)
        history = client.get_metric_history(run.info.run_id, "val_miou")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, EPOCHS + 1))
        assert max(m.value for m in history) == run.data.metrics["best_val_miou"]


def test_the_same_seed_writes_the_same_results(tracking_uri):
    client = connect(tracking_uri)
    results = []
    for name in ("first", "second"):
        experiment_id = client.create_experiment(name)
        log_ablation_runs(client, experiment_id, runs=6, seed=3)
        runs = client.search_runs([experiment_id])
        results.append(
            sorted(
                (tuple(r.data.params[axis] for axis in AXES), r.data.metrics["test_miou"])
                for r in runs
            )
        )
    assert results[0] == results[1]


def test_runs_written_at_once_read_back_as_the_logged_ones(tracking_uri):
    """The bulk writer (10,000 runs in seconds, for the report benchmark) gives the store
    what logging each run through the client gives: the same frame, histories and status."""
    store = TrackingStore.open(tracking_uri)
    frames, histories = [], []
    for name in ("logged", "written"):
        experiment_id = store.experiment(name)
        if name == "logged":
            log_ablation_runs(store.client, experiment_id, runs=len(GRID) + 3, seed=5)
        else:
            write_ablation_runs(tracking_uri, experiment_id, runs=len(GRID) + 3, seed=5)
        frame = store.frame([experiment_id])
        histories.append(
            sorted(
                round(m.value, 12)
                for run_id in frame["run_id"]
                for m in store.client.get_metric_history(run_id, "val_miou")
            )
        )
        kept = [c for c in frame.columns if c.startswith(("params.", "metrics.", "tags."))]
        kept = sorted(set(kept) - {"tags.mlflow.runName"}) + ["status"]
        frames.append(
            frame[kept].sort_values(["params.train.seed", *(f"params.{a}" for a in AXES), "metrics.test_miou"])
            .reset_index(drop=True)
        )  # fmt: skip
    assert len(frames[1]) == len(GRID) + 3
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert histories[0] == histories[1] and len(histories[0]) == (len(GRID) + 3) * EPOCHS
    assert (
        store.frame([store.existing_experiment("written")])["artifact_uri"]
        .str.endswith("/artifacts")
        .all()
    )
