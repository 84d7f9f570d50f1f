"""A real MLflow SQLite store with runs of known values."""

import pytest

from latentseg.errors import TrackingError
from latentseg.report.collect import collect
from latentseg.report.stats import ablation_axes, summarize
from latentseg.tracking import connect


def log_run(client, experiment_id, status, params, metrics, tags=None):
    run = client.create_run(experiment_id, tags=tags or {})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_collect_keeps_finished_training_runs_and_counts_the_rest(tracking_uri):
    client = connect(tracking_uri)
    experiment_id = client.create_experiment("abl")
    for seed, on, off in [(1, 0.5, 0.6), (2, 0.6, 0.8)]:
        log_run(
            client,
            experiment_id,
            "FINISHED",
            {"model.expert_attention": "True", "train.seed": seed},
            {"best_val_miou": on},
        )
        log_run(
            client,
            experiment_id,
            "FINISHED",
            {"model.expert_attention": "False", "train.seed": seed},
            {"best_val_miou": off},
        )
    log_run(
        client, experiment_id, "FAILED", {"model.expert_attention": "True", "train.seed": 3}, {}
    )
    log_run(
        client,
        experiment_id,
        "KILLED",
        {"model.expert_attention": "False", "train.seed": 3},
        {"best_val_miou": 0.1},
    )
    log_run(
        client,
        experiment_id,
        "FINISHED",
        {"study.name": "x"},
        {},
        tags={"latentseg.run_type": "study"},
    )

    collected = collect(client, experiment="abl")
    assert len(collected.runs) == 4 and collected.left_out == {
        "FAILED": 1,
        "KILLED": 1,
        "RUNNING": 0,
    }
    assert (
        collected.left_out_line()
        == "Left out: 1 FAILED, 1 KILLED (only FINISHED runs are compared)."
    )
    assert (collected.runs["wall_time_s"] >= 0).all()
    axes = ablation_axes(collected.runs)
    assert axes == ["params.model.expert_attention"]
    table = summarize(collected.runs, axes, "best_val_miou").set_index("model.expert_attention")
    assert table.loc["True", "mean"] == pytest.approx(0.55) and table.loc[
        "False", "mean"
    ] == pytest.approx(0.7)


def test_unknown_experiment_or_study_is_a_clear_error_and_creates_nothing(tracking_uri):
    client = connect(tracking_uri)
    before = [e.name for e in client.search_experiments()]
    with pytest.raises(TrackingError, match="no MLflow experiment named 'nope'"):
        collect(client, experiment="nope")
    with pytest.raises(TrackingError, match="no study named 'nope'"):
        collect(client, study="nope")
    # a report only reads: no experiment named 'nope' appears, and no run
    assert [e.name for e in client.search_experiments()] == before == ["Default"]
    assert client.search_runs(["0"]) == []


@pytest.mark.parametrize(
    "accuracies,verdict",
    [([0.49, 0.51, 0.50], "at chance, as it must be"), ([0.71, 0.73, 0.72], "NOT at chance")],
)
def test_the_negative_control_must_sit_at_chance(tracking_uri, accuracies, verdict):
    from latentseg.report.render import build

    client = connect(tracking_uri)
    experiment_id = client.create_experiment("control")
    for seed, accuracy in enumerate(accuracies):
        params = {"data.dataset": "noise", "model.num_classes": 2, "train.seed": seed}
        log_run(
            client,
            experiment_id,
            "FINISHED",
            params,
            {"test_pixel_accuracy": accuracy, "test_miou": 0.3},
        )
    report = build(collect(client, experiment="control"), "control")
    assert "Negative control (noise data, 3 runs): test pixel accuracy" in report.markdown
    assert "against chance 0.5000" in report.markdown and verdict in report.markdown
