"""The trial queue: workers pop WAITING trials lowest number first, each exactly once,
whatever the storage (journal, SQLite, PostgreSQL) and whenever they were queued, and
never create one."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from latentseg.study.storage import make_storage, pop_waiting_trial, storage_of

STORAGES = ["journal", "sqlite", "postgresql"]


@pytest.fixture
def storage_url(request, tmp_path):
    kind = request.param
    if kind == "journal":
        return f"journal:{tmp_path / 'journal.log'}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return request.getfixturevalue("postgres_db")


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
