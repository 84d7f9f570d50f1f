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
