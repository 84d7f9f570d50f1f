"""The synthetic runs the report benchmarks read: finished seed runs that cover the
ablation grid, with histories, the same for the same seed."""

from __future__ import annotations

from collections import Counter

from latentseg.tracking.store import connect
from latentseg.tracking.synthetic_runs import EPOCHS, GRID, log_ablation_runs

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
