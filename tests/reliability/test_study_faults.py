"""Study faults (issue 8): many workers on the embedded storages, and a diverging trial.

Item 2 (a trial that always crashes with ``max_retry: 2`` is attempted exactly 3 times, then
the study goes on) is proven by tests/study/test_study.py::
test_a_trial_that_always_fails_is_retried_max_retry_times_then_the_study_goes_on."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from latentseg.tracking.store import connect
from latentseg.tracking.study import FANOVA_MAX_CHOICES
from tests.conftest import subprocess_env
from tests.helpers import run_step
from tests.helpers_processes import descendants
from tests.helpers_study import journal, no_run_left_running, runs_by_type

pytestmark = pytest.mark.slow

# One epoch over one batch: each trial is as small as a real training run gets.
SMALLEST = {
    "data": {"train_size": 8, "val_size": 8, "test_size": 8, "batch_size": 8},
    "train": {"epochs": 1, "plot_samples": 1},
}


def study(path, tracking_uri, cwd, workers: int, timeout_s: int) -> tuple[int, str]:
    """``latentseg study PATH --workers N`` as a real process: (exit code, all its output).
    On timeout the whole process group goes (no worker is left behind) and the test fails."""
    command = [
        sys.executable, "-m", "latentseg.cli", "study", str(path), "--workers", str(workers),
        "--tracking-uri", tracking_uri, "--no-progress",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output = process.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"`latentseg study` did not end in {timeout_s} s:\n{process.communicate()[0]}")
    return process.returncode, output


def test_eight_workers_on_the_embedded_storages_run_each_trial_exactly_once(
    study_spec, tracking_uri, tmp_path
):
    """8 worker processes share the journal file and the SQLite MLflow store: every grid
    point runs once, with its trial and seed runs, and no writer is locked out. 17 points:
    about two trials per worker, so that workers pop while others write, and one choice more
    than fANOVA takes."""
    n = FANOVA_MAX_CHOICES + 1
    lrs = [round(0.001 * (i + 1), 3) for i in range(n)]
    path = study_spec(
        {"name": "many", "search_space": {"optim.lr": lrs}, "sampler": {"name": "grid"}},
        base=SMALLEST,
    )
    code, output = study(path, tracking_uri, tmp_path, workers=8, timeout_s=600)
    assert code == 0, output
    assert "database is locked" not in output, output

    trials = optuna.load_study(study_name="many", storage=journal(tmp_path)).trials
    assert sorted(t.number for t in trials) == list(range(n))
    assert all(t.state == TrialState.COMPLETE for t in trials), [
        (t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials
    ]
    assert sorted(t.params["optim.lr"] for t in trials) == lrs  # every point once

    client = connect(tracking_uri)
    runs = runs_by_type(client, "many")
    (parent,) = runs["study"]
    assert parent.info.status == "FINISHED" and parent.data.tags["latentseg.workers"] == "8"
    # The summary is written: fANOVA, exponential in a 17-choice axis, is skipped, not waited on
    summary = json.loads(
        Path(
            client.download_artifacts(parent.info.run_id, "study_summary.json", str(tmp_path))
        ).read_text()
    )
    assert summary["n_complete"] == n and summary["importances"]["ped_anova"] == {"optim.lr": 1.0}
    assert summary["importances"]["fanova"].startswith(f"not computed: optim.lr has {n} choices")
    assert len(runs["trial"]) == n
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs["trial"])
    assert sorted(int(r.data.tags["latentseg.trial_number"]) for r in runs["trial"]) == list(
        range(n)
    )
    assert all(r.info.status == "FINISHED" for r in runs["trial"])
    trial_ids = {r.info.run_id for r in runs["trial"]}
    assert len(runs["seed"]) == n
    assert {r.data.tags["mlflow.parentRunId"] for r in runs["seed"]} == trial_ids  # one each
    assert all(r.info.status == "FINISHED" for r in runs["seed"])
    assert no_run_left_running(client, "many")
    # the workers really ran side by side: more than one process ran trials
    assert len({r.data.tags["latentseg.owner"] for r in runs["trial"]}) > 1


def test_a_diverging_trial_fails_with_non_finite_loss_and_the_study_goes_on(
    study_spec, tracking_uri, tmp_path
):
    """docs/studies.md (Resume): a crashed trial, e.g. "non-finite loss at epoch 3", is retried up
    to ``max_retry`` times, then the study goes on; the exit code is 0 while some trial
    completed. Here ``max_retry: 0``: one failed attempt, not retried."""
    path = study_spec(
        {
            "name": "diverge",
            "search_space": {"optim.lr": [1e30, 0.003]},  # the first one diverges
            "sampler": {"name": "grid"},
            "max_retry": 0,
        },
        # two optimizer steps: the first step's update blows up the second step's loss
        base={**SMALLEST, "data": {**SMALLEST["data"], "train_size": 16}},
    )
    code, output = study(path, tracking_uri, tmp_path, workers=1, timeout_s=300)
    assert code == 0, output
    assert "failed: NonFiniteLossError: non-finite loss at epoch 1" in output, output
    assert "1 complete, 0 pruned, 1 fail" in output, output

    trials = optuna.load_study(study_name="diverge", storage=journal(tmp_path)).trials
    by_lr = {t.params["optim.lr"]: t for t in trials}
    assert len(trials) == 2  # max_retry 0: no second attempt
    assert by_lr[1e30].state == TrialState.FAIL
    assert "non-finite loss at epoch 1" in by_lr[1e30].user_attrs["fail_reason"]
    assert by_lr[0.003].state == TrialState.COMPLETE

    client = connect(tracking_uri)
    runs = runs_by_type(client, "diverge")
    trial_run = {r.data.tags["latentseg.trial_number"]: r for r in runs["trial"]}
    failed = trial_run[str(by_lr[1e30].number)]
    assert failed.info.status == "FAILED" and failed.data.tags["latentseg.optuna_state"] == "FAIL"
    assert "non-finite loss at epoch 1" in failed.data.tags["latentseg.error"]
    assert by_lr[1e30].user_attrs["mlflow_run_id"] == failed.info.run_id
    (failed_seed,) = [
        r for r in runs["seed"] if r.data.tags["mlflow.parentRunId"] == failed.info.run_id
    ]
    assert failed_seed.info.status == "FAILED"
    assert failed_seed.data.tags["latentseg.error"].startswith(
        "NonFiniteLossError: non-finite loss at epoch 1"
    )
    assert trial_run[str(by_lr[0.003].number)].info.status == "FINISHED"
    (parent,) = runs["study"]
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_fail"] == 1
    assert no_run_left_running(client, "diverge")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_whose_launch_is_killed_take_no_more_trials_and_a_relaunch_finishes(
    study_spec, tracking_uri, tmp_path, gate
):
    """SIGKILL of the launching process alone (the OOM killer's pick): its two workers finish
    the trial in hand and take no more, so queued trials stay queued; they exit on their own.
    The next launch closes the dead launch's parent run and finishes every point once."""
    import time

    lrs = [round(0.001 * (i + 1), 3) for i in range(8)]
    spec = {"name": "orphans", "search_space": {"optim.lr": lrs}, "sampler": {"name": "grid"}}
    # each worker's first trial holds at the gate until the launch is dead
    path = study_spec(spec, base={"data": gate.dataset(steps=[0], runs=[0, 1])})
    command = [
        sys.executable, "-m", "latentseg.cli", "study", str(path), "--workers", "2",
        "--tracking-uri", tracking_uri, "--no-progress",
    ]  # fmt: skip
    launch = subprocess.Popen(
        command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    (tmp_path / "store" / "optuna").mkdir(parents=True, exist_ok=True)
    storage = journal(tmp_path)
    try:
        workers = [gate.wait(run_step(run, 0), launch)["pid"] for run in (0, 1)]
        assert len(set(workers)) == 2 and set(workers) <= set(descendants(launch.pid))
        trials = optuna.load_study(study_name="orphans", storage=storage).trials
        assert sum(t.state == TrialState.RUNNING for t in trials) == 2  # a trial each in hand
        os.kill(launch.pid, signal.SIGKILL)
        launch.wait(timeout=30)
        gate.open()  # the trials in hand go on
        gone = time.time() + 120
        while time.time() < gone and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers), "orphaned workers kept running"
    finally:
        os.killpg(launch.pid, signal.SIGKILL)  # whatever is left of the group
    trials = optuna.load_study(study_name="orphans", storage=storage).trials
    states = [t.state for t in trials]
    # none taken after the launch died: the two in hand finished, the other six wait
    assert states.count(TrialState.WAITING) == len(lrs) - 2, states
    assert TrialState.RUNNING not in states  # the trials in hand were finished

    code, output = study(path, tracking_uri, tmp_path, workers=2, timeout_s=300)
    assert code == 0, output
    trials = optuna.load_study(study_name="orphans", storage=storage).trials
    done = sorted(t.params["optim.lr"] for t in trials if t.state == TrialState.COMPLETE)
    assert done == lrs
    client = connect(tracking_uri)
    parents = runs_by_type(client, "orphans")["study"]
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED"]
    assert no_run_left_running(client, "orphans")
