"""The tracking store on a real SQLite MLflow store: a study's runs found by their (quoted)
name, runs read into the frame ``mlflow.search_runs`` gives, and no use of MLflow's global
tracking URI."""

import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from latentseg.errors import TrackingError
from latentseg.report.collect import collect
from latentseg.tracking import store as store_module
from latentseg.tracking.store import TrackingStore, study_filter
from tests.conftest import subprocess_env
from tests.helpers_processes import free_port, stop_server, wait_healthy


@pytest.fixture
def global_uri():
    """MLflow's global tracking URI, restored after the test."""
    before = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(before)


def make_run(store, experiment_id, tags, status="FINISHED", metrics=None, params=None):
    run_id = store.create_run(experiment_id, tags.get("mlflow.runName", "run"), tags)
    if params:
        store.log_params(run_id, params)
    if metrics:
        store.log_metrics(run_id, metrics)
    if status != "RUNNING":
        store.end_run(run_id, status)
    return run_id


def study_runs(store, experiment_id, name):
    """A parent (FINISHED), a later parent (RUNNING), a trial and two seed runs of ``name``."""
    tags = {"latentseg.study": name}
    ids = {
        "finished parent": make_run(store, experiment_id, {**tags, "latentseg.run_type": "study"})
    }
    time.sleep(0.01)  # a later start time
    ids["running parent"] = make_run(
        store, experiment_id, {**tags, "latentseg.run_type": "study"}, status="RUNNING"
    )
    trial = {**tags, "latentseg.run_type": "trial", "latentseg.trial_number": "3"}
    ids["trial"] = make_run(store, experiment_id, trial)
    seed = {**trial, "latentseg.run_type": "seed"}
    ids["seeds"] = [
        make_run(store, experiment_id, seed, metrics={"test_miou": 0.5 + s}, params={"s": s})
        for s in (0.1, 0.2)
    ]
    return ids


def test_a_study_named_with_a_quote_finds_its_parent_trials_and_seeds(tracking_uri):
    store = TrackingStore.open(tracking_uri)
    experiment_id = store.experiment("quotes")
    ours = study_runs(store, experiment_id, "o'brien")
    study_runs(store, experiment_id, "o")  # a study whose name the quoted one starts with
    study_runs(store, store.experiment("elsewhere"), "o'brien-2")

    assert store.parent_run("o'brien").info.run_id == ours["running parent"]  # the latest
    assert store.parent_run("o'brien", status="FINISHED").info.run_id == ours["finished parent"]
    assert store.parent_run("o'brien", [store.experiment("elsewhere")]) is None
    assert [r.info.run_id for r in store.trial_runs("o'brien")] == [ours["trial"]]
    seeds = store.seed_runs("o'brien", [experiment_id])
    assert sorted(seeds["run_id"]) == sorted(ours["seeds"])
    assert sorted(seeds["metrics.test_miou"]) == [0.6, 0.7]
    trial_three = store.study_runs("o'brien", trial_number=3, experiment_ids=[experiment_id])
    assert sorted(r.info.run_id for r in trial_three) == sorted([ours["trial"], *ours["seeds"]])
    assert store.study_runs("o'brien", trial_number=3, status="RUNNING") == []
    assert store.parent_run("nobody") is None


def test_a_name_with_both_quotes_is_refused_naming_it():
    with pytest.raises(TrackingError, match="both ' and"):
        study_filter('o\'brien "the"')
    assert study_filter("o'brien", "seed", 2, "RUNNING") == (
        "tags.`latentseg.study` = \"o'brien\" and tags.`latentseg.trial_number` = '2' "
        "and tags.`latentseg.run_type` = 'seed' and attributes.status = 'RUNNING'"
    )


def test_the_frame_equals_what_mlflow_search_runs_gives_across_pages(
    tracking_uri, global_uri, monkeypatch
):
    store = TrackingStore.open(tracking_uri)
    experiment_id = store.experiment("frame")
    for index in range(7):  # runs with and without each metric, param and tag; one running
        make_run(
            store,
            experiment_id,
            {"mlflow.runName": f"r{index}", **({"odd": "yes"} if index % 2 else {})},
            status="RUNNING" if index == 3 else "FINISHED",
            metrics={"m": index / 10, **({"only_even": 1.0} if index % 2 == 0 else {})},
            params={"p": index} if index != 5 else None,
        )
    monkeypatch.setattr(store_module, "PAGE_SIZE", 3)  # three pages of runs
    ours = store.frame([experiment_id])
    mlflow.set_tracking_uri(tracking_uri)
    theirs = mlflow.search_runs([experiment_id])
    assert sorted(ours.columns) == sorted(theirs.columns)
    pd.testing.assert_frame_equal(ours, theirs[list(ours.columns)])
    assert len(store.search([experiment_id], max_results=5)) == 5


def test_reading_and_reporting_never_use_mlflows_global_uri(tmp_path, tracking_uri, global_uri):
    other = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"
    mlflow.set_tracking_uri(other)
    store = TrackingStore.open(tracking_uri)
    assert mlflow.get_tracking_uri() == other  # opening a store leaves it alone
    experiment_id = store.experiment("abl")
    for seed, value in ((1, 0.5), (2, 0.7)):
        make_run(store, experiment_id, {}, metrics={"test_miou": value}, params={"seed": seed})
    collected = collect(store, experiment="abl")
    assert sorted(collected.runs["metrics.test_miou"]) == [0.5, 0.7]
    # an MlflowClient is taken for a store, as callers not yet moved pass one
    assert len(collect(MlflowClient(tracking_uri), experiment="abl").runs) == 2


def test_connect_leaves_mlflows_process_wide_uri_alone(tmp_path, tracking_uri, global_uri):
    from latentseg.tracking import connect

    mlflow.set_tracking_uri(None)
    connect(tracking_uri)
    assert not mlflow.is_tracking_uri_set()  # unset it was, unset it stays
    other = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"
    mlflow.set_tracking_uri(other)
    client = connect(tracking_uri)
    assert mlflow.get_tracking_uri() == other
    client.create_experiment("here")  # the client writes to its own store
    assert TrackingStore.open(tracking_uri).existing_experiment("here") is not None
    assert not (tmp_path / "other").exists()


def test_histories_artifacts_and_missing_runs(tracking_uri, tmp_path):
    store = TrackingStore.open(tracking_uri)
    experiment_id = store.experiment("reading")
    run_id = make_run(store, experiment_id, {}, status="RUNNING")
    for step in (1, 2, 3):
        store.log_metrics(run_id, {"val_miou": step / 10}, step=step)
    (tmp_path / "note.txt").write_text("hello")
    store.log_artifact(run_id, tmp_path / "note.txt", "notes")
    store.end_run(run_id, "FINISHED")

    histories = store.metric_histories([run_id], "val_miou")
    assert histories.sort_values("step")["value"].tolist() == [0.1, 0.2, 0.3]
    assert store.artifact_paths(run_id, "notes") == ["notes/note.txt"]
    local = store.download_artifacts(run_id, ["notes/note.txt", "notes/missing.txt"], tmp_path)
    assert [Path(p).read_text() for p in local] == ["hello"]  # the missing one is skipped
    assert store.run(run_id).info.status == "FINISHED"
    assert store.run("0" * 32) is None


def test_a_param_longer_than_mlflow_keeps_is_cut_saying_so_and_kept_whole_in_an_artifact(
    tracking_uri, tmp_path, caplog
):
    """A search space of 1,000 learning rates is 11,000 characters of JSON; MLflow keeps 6,000
    and warns. The store logs it cut short with a note, and whole in params.json."""
    store = TrackingStore.open(tracking_uri)
    run_id = store.create_run(store.experiment("long"), "run", {})
    choices = {"type": "categorical", "choices": [1e-3 + i * 1e-7 for i in range(1000)]}
    with caplog.at_level("WARNING"):
        store.log_params(run_id, {"search_space.optim.lr": choices, "study.name": "s"})
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]
    logged = store.run(run_id).data.params
    assert logged["study.name"] == "s"
    cut = logged["search_space.optim.lr"]
    assert len(cut) == MAX_PARAM_VAL_LENGTH
    assert cut.endswith(f" ... ({len(json.dumps(choices))} characters in all: see params.json)")
    assert json.dumps(choices).startswith(cut.split(" ... (")[0])
    (path,) = store.download_artifacts(run_id, ["params.json"], tmp_path)
    assert json.loads(Path(path).read_text()) == {"search_space.optim.lr": json.dumps(choices)}


# --------------------------------------------------------------------------- tags in one request


def test_set_tags_sets_every_tag_and_the_run_name_as_mlflow_would(tracking_uri):
    store = TrackingStore.open(tracking_uri)
    run_id = store.create_run(store.experiment("tags"), "before", {})
    many = {f"latentseg.tag_{index:03d}": str(index) for index in range(150)}  # two batches
    store.set_tags(run_id, {"mlflow.runName": "after", "latentseg.round": 2, **many})
    run = store.run(run_id)
    assert run.info.run_name == "after"  # the run's name follows its tag, as with set_tag
    assert run.data.tags["latentseg.round"] == "2"  # values stored as strings
    assert {key: run.data.tags[key] for key in many} == many
    store.set_tags(run_id, {})  # nothing to set: nothing sent


@pytest.fixture
def tracking_server(tmp_path):
    """A real ``mlflow server`` on a loopback port -> (its URL, a function that stops it and
    returns its access log, one line a request)."""
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                "--default-artifact-root", str(tmp_path / "artifacts"),
            ],
            cwd=tmp_path, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def stop() -> list[str]:
        stop_server(server)
        return log.read_text().splitlines()

    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server, timeout_s=180)
        yield url, stop
    finally:
        stop_server(server)


@pytest.mark.slow
def test_set_tags_sends_one_request_to_a_tracking_server(tracking_server):
    """Counted at a real server, in its access log: a study's worker sets several tags on a
    run at once (its Optuna state, an error), and each request is a round trip."""
    url, stop = tracking_server
    store = TrackingStore.open(url)
    run_id = store.create_run(store.experiment("requests"), "run", {})
    tags = {"latentseg.optuna_state": "FAIL", "latentseg.error": "diverged", "latentseg.round": "2"}
    store.set_tags(run_id, tags)
    assert {key: store.run(run_id).data.tags[key] for key in tags} == tags
    posts = [line for line in stop() if '"POST /api/' in line]
    assert [line for line in posts if "/runs/set-tag" in line] == []
    assert len([line for line in posts if "/runs/log-batch" in line]) == 1, posts
