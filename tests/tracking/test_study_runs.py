"""A study's MLflow runs (latentseg.tracking.study) on a real SQLite store: the parent run of
a launch, a trial's child run, the status each Optuna state ends it with, and the runs a dead
process left RUNNING closed as such."""

from __future__ import annotations

import json
import subprocess
import sys

from latentseg.tracking.store import TrackingStore
from latentseg.tracking.study import (
    close_dead_study_runs,
    close_orphans,
    end_trial_run,
    start_study_run,
    start_trial_run,
)


def launch(store: TrackingStore, experiment_id: str) -> str:
    return start_study_run(
        store, experiment_id, "o'brien", "journal.log", "study.yaml", {"n_trials": 3}, 2
    )


def test_trials_are_children_of_the_launch_and_end_as_their_optuna_state(tracking_uri, tiny):
    store = TrackingStore.open(tracking_uri)
    experiment_id = store.experiment("studies")
    parent = launch(store, experiment_id)
    config = tiny()
    ended = {}
    for number, state in enumerate(["COMPLETE", "PRUNED", "FAIL", "KILLED"]):
        run_id = start_trial_run(
            store, experiment_id, parent, "o'brien", number, {"optim.lr": 0.01}, config, "x"
        )
        end_trial_run(store, run_id, state, metrics={"value": 0.5} if number == 0 else None)
        ended[state] = store.run(run_id)
    assert store.parent_run("o'brien", [experiment_id]).info.run_id == parent
    assert {r.info.run_id for r in store.trial_runs("o'brien", [experiment_id])} == {
        r.info.run_id for r in ended.values()
    }
    statuses = {state: run.info.status for state, run in ended.items()}
    assert statuses == {
        "COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "KILLED": "KILLED"
    }  # fmt: skip
    assert ended["KILLED"].data.tags["latentseg.optuna_state"] == "FAIL"  # as Optuna records it
    complete = ended["COMPLETE"]
    assert complete.data.tags["mlflow.parentRunId"] == parent
    assert complete.data.params["trial.optim.lr"] == "0.01"
    assert complete.data.params["optim.lr"] == "0.003"  # the full config beside the sample
    assert complete.data.metrics["value"] == 0.5


def test_runs_left_running_by_a_dead_process_are_closed(tracking_uri, tiny):
    store = TrackingStore.open(tracking_uri)
    experiment_id = store.experiment("studies")
    alive, dead = launch(store, experiment_id), launch(store, experiment_id)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    owner = json.loads(store.run(dead).data.tags["latentseg.owner"])
    store.set_tags(dead, {"latentseg.owner": json.dumps({**owner, "pid": child.pid})})
    trial = start_trial_run(store, experiment_id, dead, "o'brien", 7, {}, tiny(), "x")
    close_dead_study_runs(store, experiment_id, "o'brien")
    close_orphans(store, experiment_id, "o'brien", 7, "its worker died")
    assert store.run(alive).info.status == "RUNNING"  # this process launched it
    assert store.run(dead).info.status == "KILLED"
    orphan = store.run(trial)
    assert orphan.info.status == "FAILED"
    assert orphan.data.tags["latentseg.error"] == "its worker died"
    assert orphan.data.tags["latentseg.optuna_state"] == "FAIL"


def test_one_axis_has_importance_one_by_every_evaluator_without_fitting_them(tracking_uri):
    """A study of one axis: each evaluator's normalized importance is 1 for it (what Optuna
    computes, checked here), logged as metrics without fitting fANOVA's forest and without a
    plot of one bar; with two axes, Optuna's evaluators run and their plots are drawn."""
    import optuna

    from latentseg.tracking.study import log_study_summary

    store = TrackingStore.open(tracking_uri)
    experiment_id = store.experiment("studies")
    found = {}
    sampler_space = {"optim.lr": [0.001, 0.003, 0.01], "model.num_latents": [2, 4]}
    for axes in (["optim.lr"], ["optim.lr", "model.num_latents"]):
        study = optuna.create_study(direction="maximize")
        study.sampler = optuna.samplers.GridSampler({k: sampler_space[k] for k in axes}, seed=0)

        def objective(trial, axes=axes):
            return sum(0.1 * i * trial.suggest_categorical(k, sampler_space[k])
                       for i, k in enumerate(axes, 1))  # fmt: skip

        study.optimize(objective, n_trials=6 if len(axes) == 2 else 3)
        parent = launch(store, experiment_id)
        summary = log_study_summary(store, parent, study, ["val_miou"])
        run = store.run(parent)
        plots = {a.path for a in store.client.list_artifacts(parent, "plots")}
        found[len(axes)] = (summary["importances"], run.data.metrics, plots)
        if len(axes) == 1:
            for name, evaluator in (("ped_anova", optuna.importance.PedAnovaImportanceEvaluator),
                                    ("fanova", optuna.importance.FanovaImportanceEvaluator)):  # fmt: skip
                assert summary["importances"][name] == optuna.importance.get_param_importances(
                    study, evaluator=evaluator()
                )
    importances, metrics, plots = found[1]
    assert importances == {"ped_anova": {"optim.lr": 1.0}, "fanova": {"optim.lr": 1.0}}
    assert metrics["importance.ped_anova.optim.lr"] == metrics["importance.fanova.optim.lr"] == 1
    assert not [p for p in plots if "param_importances" in p]
    importances, metrics, plots = found[2]
    assert set(importances["fanova"]) == {"optim.lr", "model.num_latents"}
    assert "importance.fanova.model.num_latents" in metrics
    assert {"plots/param_importances_ped_anova.png", "plots/param_importances_fanova.png"} <= plots
