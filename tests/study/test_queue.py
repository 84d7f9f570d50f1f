"""The trial queue: workers pop WAITING trials lowest number first, each exactly once,
whatever the storage (journal, SQLite, PostgreSQL) and whenever they were queued, and
never create one."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from latentseg.study.storage import make_storage, pop_waiting_trial, storage_of

STORAGES = ["journal", "sqlite", "postgresql"]


@pytest.mark.parametrize("storage_url", STORAGES, indirect=True)
def test_two_workers_pop_each_waiting_trial_once_lowest_number_first(storage_url):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(storage_url, max_retry=0)
    first = optuna.create_study(study_name="queue", storage=storage)
    first.enqueue_trial({"x": 0})
    first.add_trial(  # number 1, finished: never popped
        optuna.trial.create_trial(
            params={"x": 0.5}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            value=0.5,
        )
    )  # fmt: skip
    # a second worker with its own connection and cache, loaded before the last trials were
    # queued (as by another launch's next round)
    second = optuna.load_study(study_name="queue", storage=make_storage(storage_url, 0))
    second.get_trials()
    for x in (2, 3, 4):
        first.enqueue_trial({"x": x})
    popped = []
    for study in (first, second, first, second, first):
        result = pop_waiting_trial(study)
        if result is not None:
            trial, _ = result
            assert trial.suggest_float("x", 0, 10) == trial.number  # the queued params
            study.tell(trial, float(trial.number))
        popped.append(None if result is None else result[0].number)
    assert popped == [0, 2, 3, 4, None]
    trials = first.get_trials(deepcopy=False)
    assert len(trials) == 5  # none created by popping
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert [t.value for t in trials] == [0.0, 0.5, 2.0, 3.0, 4.0]
    assert all("latentseg_owner" in t.system_attrs for t in trials if t.number != 1)
    assert storage_of(second) is not storage_of(first)


DIES_ON_TAKING = """
import os, signal, sys
import optuna
from optuna.trial import TrialState
from latentseg.study.storage import make_storage, pop_waiting_trial

storage = make_storage(sys.argv[1], max_retry=1)
take = storage.set_trial_state_values  # (Optuna wraps an RDB storage in a cache over it)

def take_then_die(trial_id, state, values=None):
    taken = take(trial_id, state, values)
    if taken and state == TrialState.RUNNING:
        os.kill(os.getpid(), signal.SIGKILL)  # a launch killed the instant it took a trial
    return taken

storage.set_trial_state_values = take_then_die
pop_waiting_trial(optuna.load_study(study_name="queue", storage=storage))
"""


@pytest.mark.parametrize("storage_url", ["journal", "sqlite"], indirect=True)
def test_a_worker_killed_the_instant_it_takes_a_trial_leaves_it_to_recovery(storage_url):
    """SIGKILL between the WAITING -> RUNNING write and anything after it: the next launch's
    recovery still knows the trial's taker is dead, fails it and queues it again (before,
    such a trial had no owner and stayed RUNNING for ever)."""
    import signal
    import subprocess
    import sys

    from latentseg.study.storage import recover_dead_trials
    from tests.conftest import subprocess_env

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="queue", storage=make_storage(storage_url, 1))
    study.enqueue_trial({"x": 1})
    died = subprocess.run(
        [sys.executable, "-c", DIES_ON_TAKING, storage_url], env=subprocess_env(), timeout=120
    )
    assert died.returncode == -signal.SIGKILL
    study = optuna.load_study(study_name="queue", storage=make_storage(storage_url, 1))
    assert [t.state for t in study.trials] == [TrialState.RUNNING]
    recovered = recover_dead_trials(study, max_retry=1)
    assert [t.number for t in recovered] == [0]
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].system_attrs["failed_trial"] == 0
    assert not [k for k in trials[1].system_attrs if k.startswith("latentseg_")]  # a clean slate
    assert pop_waiting_trial(study)[1] is not None  # and it can be taken again
