"""What launches leave in a study's storage (issue 28, item 5): a RUNNING trial that no
latentseg worker owns or claims is recovered once the heartbeat grace has passed, and the
stops of past launches do not pile up in the study's attributes. Real Optuna storages
(journal, SQLite, PostgreSQL) and a real SQLite MLflow store."""

from __future__ import annotations

import datetime

import optuna
import pytest
from optuna.trial import TrialState

from latentseg.study.runner import run_study
from latentseg.study.storage import (
    GRACE_PERIOD_S,
    STOPS_ATTR,
    forget_stops,
    launch_stopped,
    make_storage,
    mark_launch_stopped,
    recover_dead_trials,
    storage_of,
)
from latentseg.tracking.store import TrackingStore
from latentseg.tracking.study import running_launches, start_study_run


def study_attrs(storage, name: str) -> dict:
    return storage.get_study_system_attrs(storage.get_study_id_from_name(name))


def running_trial(study: optuna.Study, started_ago_s: float, x: float) -> None:
    """A RUNNING trial with neither owner nor claim, started ``started_ago_s`` ago: what a
    process other than a latentseg worker (``study.ask()``, an older latentseg) leaves."""
    study.add_trial(
        optuna.trial.FrozenTrial(
            number=-1, trial_id=-1, state=TrialState.RUNNING, value=None,
            datetime_start=datetime.datetime.now() - datetime.timedelta(seconds=started_ago_s),
            datetime_complete=None, params={"x": x},
            distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            user_attrs={}, system_attrs={}, intermediate_values={},
        )
    )  # fmt: skip


@pytest.mark.parametrize("storage_url", ["journal", "sqlite", "postgresql"], indirect=True)
def test_a_running_trial_with_neither_owner_nor_claim_is_recovered_after_the_grace(storage_url):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="unowned", storage=make_storage(storage_url, 1))
    running_trial(study, started_ago_s=10 * GRACE_PERIOD_S, x=0.1)  # silent for long: dead
    running_trial(study, started_ago_s=0, x=0.2)  # just started: within the grace
    beating = storage_url.startswith(("sqlite", "postgresql"))
    if beating:  # started long ago too, but its heartbeat is fresh: alive
        running_trial(study, started_ago_s=10 * GRACE_PERIOD_S, x=0.3)
        storage = storage_of(study)
        study_id = storage.get_study_id_from_name("unowned")
        storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, 2))

    recovered = recover_dead_trials(study, max_retry=1)

    assert [t.number for t in recovered] == [0]
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL
    assert "no owner, no claim" in trials[0].user_attrs["fail_reason"]
    assert [t.state for t in trials[1 : 2 + beating]] == [TrialState.RUNNING] * (1 + beating)
    (again,) = [t for t in trials if t.state == TrialState.WAITING]  # queued again, once
    assert again.params == {"x": 0.1} and again.system_attrs["failed_trial"] == 0
    assert recover_dead_trials(study, max_retry=1) == []  # nothing else is taken for dead


def test_stops_are_one_attribute_and_a_new_launch_keeps_only_the_running_ones(
    tmp_path, tracking_uri
):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = f"journal:{tmp_path / 'journal.log'}"
    study = optuna.create_study(study_name="stops", storage=make_storage(storage_url, 0))
    store = TrackingStore.open(tracking_uri)
    experiment_id = store.experiment("stops")
    launches = []
    for index in range(4):  # four launches, each stopped (a Ctrl-C); the third still winding down
        launch = start_study_run(store, experiment_id, "stops", storage_url, "s.yaml", {}, 1)
        launches.append(launch)
        forget_stops(study, running_launches(store, experiment_id, "stops"))  # as it starts
        mark_launch_stopped(study, launch, "SIGINT", storage_url)
        assert launch_stopped(study, launch) == "SIGINT"
        if index < 2:
            store.end_run(launch, "KILLED")
    attrs = study_attrs(make_storage(storage_url, 0), "stops")  # as another process reads it
    assert [key for key in attrs if key.startswith("latentseg_stop")] == [STOPS_ATTR]
    # the ended launches' stops went as later ones started; a running launch keeps its own
    assert attrs[STOPS_ATTR] == {launches[2]: "SIGINT", launches[3]: "SIGINT"}
    store.end_run(launches[2], "KILLED")
    forget_stops(study, running_launches(store, experiment_id, "stops"))  # a fifth launch
    assert study_attrs(storage_of(study), "stops")[STOPS_ATTR] == {launches[3]: "SIGINT"}
    assert launch_stopped(study, launches[0]) is None


@pytest.mark.slow
def test_a_new_launch_drops_the_stops_of_launches_that_are_over(study_spec, tracking_uri):
    path = study_spec(
        {"name": "relaunch", "search_space": {"model.num_latents": [2]}, "sampler": {"name": "grid"}},
        base={"train": {"epochs": 1}, "tracking": {"tracking_uri": tracking_uri}},
    )  # fmt: skip
    first = run_study(str(path), progress=False)
    study = optuna.load_study(study_name="relaunch", storage=make_storage(first.storage, 0))
    # as if the first launch had been stopped: its stop recorded, its parent run closed
    mark_launch_stopped(study, first.parent_run_id, "SIGINT", first.storage)
    second = run_study(str(path), progress=False)
    assert study_attrs(make_storage(second.storage, 0), "relaunch")[STOPS_ATTR] == {}
    assert TrackingStore.open(tracking_uri).run(first.parent_run_id).info.status == "FINISHED"
