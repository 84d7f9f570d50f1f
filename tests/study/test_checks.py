"""A launch that would mix a study's configurations or its tracking stores is refused before
it runs anything (in-memory Optuna studies; the stores are stand-ins)."""

from __future__ import annotations

import optuna
import pytest

from latentseg.errors import ConfigError
from latentseg.study.checks import check_fingerprint, check_store, fingerprint, store_id
from latentseg.study.spec import load_study_spec

SPEC = {
    "name": "checked",
    "search_space": {"model.num_latents": [4, 8]},
    "sampler": {"name": "grid"},
}


class Store:
    """A tracking store that knows the runs ``known``."""

    def __init__(self, uri: str, known: tuple[str, ...] = ()) -> None:
        self.uri, self.known = uri, known

    def run(self, run_id: str):
        return object() if run_id in self.known else None


def test_a_resumed_launch_may_change_the_budget_but_not_the_spec(study_spec):
    path = study_spec(SPEC)
    loaded = load_study_spec(path)
    study = optuna.create_study()
    check_fingerprint(study, loaded, "first.yaml")  # the first launch records it
    budget = load_study_spec(path, n_trials=1)
    assert fingerprint(budget) == fingerprint(loaded)
    check_fingerprint(study, budget, "first.yaml")
    other = load_study_spec(path, overrides=["train.epochs=7"])
    with pytest.raises(ConfigError, match=r"c\.yaml: study 'checked' was started with a different"):
        check_fingerprint(study, other, "c.yaml")


def test_a_study_keeps_its_tracking_store(study_spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loaded = load_study_spec(study_spec(SPEC))
    assert store_id("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert store_id("http://host:5000/") == "http://host:5000"
    study = optuna.create_study()
    check_store(study, loaded, Store("sqlite:///mlflow.db"), "s.yaml", None)  # recorded
    check_store(study, loaded, Store(f"sqlite:///{tmp_path / 'mlflow.db'}"), "s.yaml", None)
    with pytest.raises(ConfigError, match="has its runs in sqlite:///.*mlflow.db, not in http"):
        check_store(study, loaded, Store("http://host:5000"), "s.yaml", None)


def test_a_study_from_before_the_record_is_checked_by_its_runs(study_spec):
    loaded = load_study_spec(study_spec(SPEC))
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(value=0.5, user_attrs={"mlflow_run_id": "r1"}))
    with pytest.raises(ConfigError, match="has its runs in another tracking store"):
        check_store(study, loaded, Store("http://elsewhere"), "s.yaml", None)
    check_store(study, loaded, Store("http://here", known=("r1",)), "s.yaml", None)
    assert study.user_attrs["latentseg.tracking_store"] == "http://here"
