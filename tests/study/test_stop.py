"""A stopped launch's workers take no more trials, even where no signal reaches them: the
stop is recorded in the study (real journal storage, real MLflow SQLite store, real
training)."""

from __future__ import annotations

import time

import pytest
from optuna.trial import TrialState

from latentseg.study.local_workers import LocalWorkers
from latentseg.study.runner import StopAnnouncer, open_launch, start_parent_run
from latentseg.study.spec import load_study_spec
from latentseg.study.trials import queue_trials
from latentseg.study.worker import worker_loop
from latentseg.train import TrainingInterrupted


class Flag:
    """A launch's stop as the pools poll it (what StopSignal gives them)."""

    def __init__(self) -> None:
        self.received: str | None = None

    def __call__(self) -> bool:
        return self.received is not None


def launched(study_spec, tracking_uri, name: str):
    path = study_spec(
        {"name": name, "search_space": {"model.num_latents": [4, 8]}, "sampler": {"name": "grid"}},
        base={"train": {"epochs": 1}, "data": {"train_size": 64}},
    )
    loaded = load_study_spec(str(path))
    launch = open_launch(loaded, str(path), 1, None, tracking_uri, time.time())
    launch.pool = LocalWorkers(1)
    queue_trials(launch.study, loaded)
    return launch, start_parent_run(launch)


def test_a_worker_of_a_stopped_launch_takes_no_trial_but_another_launchs_workers_do(
    study_spec, tracking_uri
):
    launch, context = launched(study_spec, tracking_uri, "stopped")
    flag = Flag()
    stop = StopAnnouncer(flag, launch.study, context.parent_run_id, launch.storage_url)
    assert not stop()  # nothing recorded while the launch runs
    flag.received = "SIGTERM"
    assert stop() and stop.received == "SIGTERM"
    with pytest.raises(TrainingInterrupted, match="SIGTERM"):
        worker_loop(context, launch.storage_url, None)
    assert [t.state for t in launch.study.get_trials()] == [TrialState.WAITING] * 2

    # a later launch of the same study is not stopped by the first one's stop
    _, later = launched(study_spec, tracking_uri, "stopped")
    assert worker_loop(later, launch.storage_url, None) == 2
    assert [t.state for t in launch.study.get_trials()] == [TrialState.COMPLETE] * 2
