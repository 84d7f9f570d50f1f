"""Real Optuna storages (journal file, SQLite) and a real MLflow SQLite store."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from latentseg.study import run_study
from latentseg.study.storage import DEFAULT_JOURNAL, default_journal, make_storage
from latentseg.tracking.store import connect
from tests.conftest import launch_study, subprocess_env
from tests.helpers import run_step
from tests.helpers_processes import descendants
from tests.helpers_study import journal, no_run_left_running, runs_by_type

pytestmark = pytest.mark.slow


def test_grid_study_runs_each_point_once_with_parent_trial_and_seed_runs(
    study_spec, tracking_uri, tmp_path
):
    path = study_spec(
        {
            "name": "grid",
            "search_space": {"model.num_latents": [4, 8], "model.expert_attention": [True, False]},
            "sampler": {"name": "grid"},
            "seeds": 2,
        }
    )
    result = run_study(str(path), tracking_uri=tracking_uri, progress=False)
    study = optuna.load_study(study_name="grid", storage=journal(tmp_path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert sorted(
        (t.params["model.num_latents"], t.params["model.expert_attention"]) for t in study.trials
    ) == [(4, False), (4, True), (8, False), (8, True)]

    client = connect(tracking_uri)
    runs = runs_by_type(client, "grid")
    (parent,) = runs["study"]
    assert parent.info.run_id == result.parent_run_id and parent.info.status == "FINISHED"
    assert parent.data.tags["latentseg.study"] == "grid" and parent.data.tags[
        "latentseg.storage"
    ].startswith("journal:")
    assert len(runs["trial"]) == len(study.trials) == 4
    trial_runs = {int(r.data.tags["latentseg.trial_number"]): r for r in runs["trial"]}
    for trial in study.trials:
        run = trial_runs[trial.number]
        assert (
            run.info.status == "FINISHED"
            and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        )
        assert (
            run.data.tags["latentseg.optuna_state"] == "COMPLETE"
            and len(run.data.tags["latentseg.config_hash"]) == 12
        )
        assert run.data.params["trial.model.num_latents"] == str(trial.params["model.num_latents"])
        seeds = [r for r in runs["seed"] if r.data.tags["mlflow.parentRunId"] == run.info.run_id]
        assert sorted(int(r.data.params["train.seed"]) for r in seeds) == [7, 8]
        # the point in words on the trial's run and its seeds, its keys in the spec's order
        # (the spec file's keys are sorted): the UI's "Group by" tag
        point = (
            f"expert_attention={trial.params['model.expert_attention']}, "
            f"num_latents={trial.params['model.num_latents']}"
        )
        assert {r.data.tags["latentseg.point"] for r in [run, *seeds]} == {point}
        per_seed = [r.data.metrics["best_val_miou"] for r in seeds]
        assert (
            run.data.metrics["val_miou"]
            == pytest.approx(sum(per_seed) / 2)
            == pytest.approx(trial.value)
        )
        assert {run.data.metrics["seed_7_val_miou"], run.data.metrics["seed_8_val_miou"]} == set(
            per_seed
        )
        assert (
            len({r.data.tags["latentseg.config_group"] for r in seeds}) == 1
        )  # same config, two seeds
    assert parent.data.metrics["best_val_miou"] == pytest.approx(study.best_value)
    assert parent.data.params["best.model.num_latents"] == str(
        study.best_params["model.num_latents"]
    )
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)} | {
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")
    }
    assert {
        "trials.csv",
        "study_summary.json",
        "plots/optimization_history.png",
        "plots/intermediate_values.png",
        "plots/parallel_coordinate.png",
    } <= artifacts
    assert {
        "plots/param_importances_ped_anova.png",
        "plots/param_importances_fanova.png",
    } & artifacts

    # The same command again resumes: nothing is repeated; a new (empty) launch parent.
    again = run_study(str(path), tracking_uri=tracking_uri, progress=False)
    assert len(optuna.load_study(study_name="grid", storage=journal(tmp_path)).trials) == 4
    runs = runs_by_type(client, "grid")
    assert (
        len(runs["study"]) == 2
        and len(runs["trial"]) == 4
        and again.parent_run_id != result.parent_run_id
    )


def test_two_workers_finish_exactly_the_grid_and_tpe_exactly_n_trials(
    study_spec, tracking_uri, tmp_path, monkeypatch
):
    """Two worker processes, twice in one process (as in a notebook): the second study's
    workers, forked from the server the first one started, run in the environment of the
    second launch (here the native kernel turned off between the two)."""
    from latentseg.models.encoder import native_first_stage_status

    here = native_first_stage_status().split(" ", 1)[0]  # in the environment of the first
    grid = study_spec(
        {
            "name": "par",
            "search_space": {"model.num_latents": [2, 4, 8]},
            "sampler": {"name": "grid"},
        },
        name="par.yaml",
    )
    run_study(str(grid), workers=2, tracking_uri=tracking_uri, progress=False)
    study = optuna.load_study(study_name="par", storage=journal(tmp_path))
    assert sorted(t.params["model.num_latents"] for t in study.trials) == [2, 4, 8]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    client = connect(tracking_uri)
    assert len(runs_by_type(client, "par")["trial"]) == 3

    tpe = study_spec(
        {
            "name": "tpe",
            "search_space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
            "n_trials": 3,
        },
        name="tpe.yaml",
    )
    monkeypatch.setenv("LATENTSEG_NATIVE", "0")
    run_study(str(tpe), workers=2, tracking_uri=tracking_uri, progress=False)
    study = optuna.load_study(study_name="tpe", storage=journal(tmp_path))
    assert len(study.trials) == 3 and len({t.params["optim.lr"] for t in study.trials}) == 3, [
        (t.number, t.params, t.system_attrs) for t in study.trials
    ]
    assert len(runs_by_type(client, "tpe")["trial"]) == 3
    assert no_run_left_running(client, "tpe")
    kernel = {"par": here, "tpe": "off"}
    for name, status in kernel.items():
        seeds = runs_by_type(client, name)["seed"]
        assert {r.data.tags["latentseg.native_kernel"] for r in seeds} == {status}, name


def test_pruned_trials_are_killed_and_train_fewer_epochs(study_spec, tracking_uri, tmp_path):
    spec = {
        "name": "prune",
        "search_space": {"optim.lr": [0.003, 1e-9]},  # the second trial cannot improve
        "sampler": {"name": "grid"},
        "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        "objective": {"metric": "val_loss"},
    }
    run_study(
        str(study_spec(spec, base={"train": {"epochs": 4}})),
        tracking_uri=tracking_uri,
        progress=False,
    )
    study = optuna.load_study(study_name="prune", storage=journal(tmp_path))
    assert study.direction.name == "MINIMIZE"
    states = {t.params["optim.lr"]: t for t in study.trials}
    assert states[0.003].state == TrialState.COMPLETE and states[1e-9].state == TrialState.PRUNED
    client = connect(tracking_uri)
    runs = runs_by_type(client, "prune")
    pruned = next(r for r in runs["trial"] if r.data.tags["latentseg.optuna_state"] == "PRUNED")
    assert pruned.info.status == "KILLED" and pruned.data.tags["pruned_at_epoch"] == "1"
    (pruned_seed,) = [
        r for r in runs["seed"] if r.data.tags["mlflow.parentRunId"] == pruned.info.run_id
    ]
    (done_seed,) = [
        r for r in runs["seed"] if r.data.tags["mlflow.parentRunId"] != pruned.info.run_id
    ]
    assert pruned_seed.info.status == "KILLED" and pruned_seed.data.tags["pruned_at_epoch"] == "1"
    epochs = lambda run: len(client.get_metric_history(run.info.run_id, "val_loss"))  # noqa: E731
    assert epochs(pruned_seed) < epochs(done_seed) == 4


def test_a_trial_that_always_fails_is_retried_max_retry_times_then_the_study_goes_on(
    study_spec, tracking_uri, tmp_path
):
    spec = {
        "name": "crash",
        "search_space": {"optim.lr": [1e30, 0.003]},
        "sampler": {"name": "grid"},
        "max_retry": 2,
    }
    run_study(
        str(study_spec(spec, base={"train": {"epochs": 2}})),
        tracking_uri=tracking_uri,
        progress=False,
    )
    study = optuna.load_study(study_name="crash", storage=journal(tmp_path))
    diverging = [t for t in study.trials if t.params["optim.lr"] == 1e30]
    assert [t.state for t in diverging] == [TrialState.FAIL] * 3  # the attempt and 2 retries
    assert [t.state for t in study.trials if t.params["optim.lr"] == 0.003] == [TrialState.COMPLETE]
    client = connect(tracking_uri)
    failed = [r for r in runs_by_type(client, "crash")["trial"] if r.info.status == "FAILED"]
    assert len(failed) == 3 and all(
        "non-finite loss at epoch" in r.data.tags["latentseg.error"] for r in failed
    )
    assert no_run_left_running(client, "crash")


def test_sqlite_storage_with_heartbeat_works_for_one_worker(study_spec, tracking_uri, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    path = study_spec(
        {"name": "lite", "search_space": {"model.num_latents": [2, 4]}, "sampler": {"name": "grid"}}
    )
    result = run_study(str(path), storage=storage, tracking_uri=tracking_uri, progress=False)
    study = optuna.load_study(study_name="lite", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert result.storage == storage


def launch(path, tracking_uri, cwd, progress=False) -> tuple[list[str], subprocess.Popen]:
    """``latentseg study PATH --workers 2`` as a real process (its own process group, as a
    terminal's foreground job is)."""
    command = [
        sys.executable,
        "-m",
        "latentseg.cli",
        "study",
        str(path),
        "--workers",
        "2",
        "--tracking-uri",
        tracking_uri,
        *([] if progress else ["--no-progress"]),
    ]
    return command, subprocess.Popen(
        command,
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def rerun(command, cwd) -> None:
    done = subprocess.run(
        command, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_worker_killed_mid_trial_is_recovered_and_the_grid_finishes_without_duplicates(
    study_spec, tracking_uri, tmp_path, gate
):
    spec = {
        "name": "kill",
        "search_space": {"model.num_latents": [2, 4, 8, 16]},
        "sampler": {"name": "grid"},
        "max_retry": 1,
    }
    # the first seed run to train holds at the gate: mid-trial, its MLflow runs made
    path = study_spec(spec, base={"data": gate.dataset(steps=[0], runs=[0])})
    command, parent = launch(path, tracking_uri, tmp_path)
    client = connect(tracking_uri)
    held = gate.wait(run_step(0, 0), parent)
    experiment = client.get_experiment_by_name("kill")
    (trial_run,) = [
        r
        for r in client.search_runs(
            [experiment.experiment_id], "tags.`latentseg.run_type` = 'trial'"
        )
        if r.info.status == "RUNNING"
        and json.loads(r.data.tags["latentseg.owner"])["pid"] == held["pid"]
    ]
    owner = json.loads(trial_run.data.tags["latentseg.owner"])
    assert owner["pid"] in descendants(parent.pid)  # a worker of this study, tagged on its trial
    os.kill(owner["pid"], signal.SIGKILL)  # later runs do not hold: the others go on
    output = parent.communicate(timeout=300)[0]
    assert parent.returncode == 0, output
    rerun(command, tmp_path)

    study = optuna.load_study(study_name="kill", storage=journal(tmp_path))
    complete = [
        t.params["model.num_latents"] for t in study.trials if t.state == TrialState.COMPLETE
    ]
    assert sorted(complete) == [2, 4, 8, 16]  # every point once, none twice
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"] == "worker process died"
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    runs = runs_by_type(client, "kill")
    assert len(runs["trial"]) == len(study.trials) == 5
    assert no_run_left_running(client, "kill")
    dead_run = next(
        r for r in runs["trial"] if r.data.tags["latentseg.trial_number"] == str(failed[0].number)
    )
    assert dead_run.info.status == "FAILED"


def test_postgresql_storage_with_two_workers_finishes_the_grid_once(
    study_spec, tracking_uri, postgres_db
):
    path = study_spec(
        {
            "name": "pg",
            "search_space": {"model.num_latents": [2, 4, 8]},
            "sampler": {"name": "grid"},
        },
        name="pg.yaml",
    )
    result = run_study(
        str(path), workers=2, storage=postgres_db, tracking_uri=tracking_uri, progress=False
    )
    study = optuna.load_study(study_name="pg", storage=postgres_db)
    assert sorted(t.params["model.num_latents"] for t in study.trials) == [2, 4, 8]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert (
        result.storage == postgres_db
    )  # no password in this URL; redaction is tested in test_spec
    client = connect(tracking_uri)
    assert len(runs_by_type(client, "pg")["trial"]) == 3 and no_run_left_running(client, "pg")


def test_two_launches_on_one_postgresql_study_run_each_grid_point_once(
    study_spec, tracking_uri, postgres_db, tmp_path
):
    """Two `latentseg study` processes (as on two machines) share one PostgreSQL study: the
    queueing is serialised by a database lock, so no grid point is queued or run twice."""
    path = study_spec(
        {
            "name": "pg2",
            "search_space": {"model.num_latents": [2, 4, 8, 16]},
            "sampler": {"name": "grid"},
        },
        name="pg2.yaml",
    )
    connect(tracking_uri).search_experiments()  # the store's schema, created once
    launches = [launch_study(path, postgres_db, tracking_uri, tmp_path) for _ in range(2)]
    for launch_ in launches:
        output = launch_.communicate(timeout=300)[0]
        assert launch_.returncode == 0, output
    study = optuna.load_study(study_name="pg2", storage=postgres_db)
    assert sorted(t.params["model.num_latents"] for t in study.trials) == [2, 4, 8, 16]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    client = connect(tracking_uri)
    runs = runs_by_type(client, "pg2")
    assert len(runs["study"]) == 2 and len(runs["trial"]) == 4  # a parent per launch
    assert no_run_left_running(client, "pg2")


def test_a_resumed_search_does_not_replay_the_first_launchs_proposals(
    study_spec, tracking_uri, tmp_path
):
    path = study_spec(
        {
            "name": "more",
            "search_space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
            "n_trials": 2,
        },
        base={"train": {"epochs": 1}},
    )
    run_study(str(path), tracking_uri=tracking_uri, progress=False)
    run_study(str(path), n_trials=4, tracking_uri=tracking_uri, progress=False)
    study = optuna.load_study(study_name="more", storage=journal(tmp_path))
    assert len(study.trials) == 4 and len({t.params["optim.lr"] for t in study.trials}) == 4
    with pytest.raises(Exception, match="different spec or base experiment"):
        run_study(
            str(path), tracking_uri=tracking_uri, overrides=["train.epochs=2"], progress=False
        )


def test_sigterm_to_the_parent_stops_all_workers_and_closes_every_run(
    study_spec, tracking_uri, tmp_path, gate
):
    path = study_spec(
        {
            "name": "term",
            "search_space": {"model.num_latents": [2, 4, 8, 16]},
            "sampler": {"name": "grid"},
            "max_retry": 0,
        },
        # the first two seed runs hold at the gate (one per worker) until the stop reaches
        # them: both workers are mid-trial when the signal comes, however loaded the machine
        base={"data": gate.dataset(steps=[0], runs=[0, 1])},
    )
    command, parent = launch(path, tracking_uri, tmp_path)
    client = connect(tracking_uri)
    for run in (0, 1):
        gate.wait(run_step(run, 0), parent)
    parent.send_signal(signal.SIGTERM)
    output = parent.communicate(timeout=120)[0]
    assert parent.returncode == 130, output
    assert no_run_left_running(client, "term")
    runs = runs_by_type(client, "term")
    assert [r.info.status for r in runs["study"]] == ["KILLED"]
    study = optuna.load_study(study_name="term", storage=journal(tmp_path))
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    # max_retry 0, yet the interrupted points are queued again: an interrupt spends no retry.
    rerun(command, tmp_path)
    study = optuna.load_study(study_name="term", storage=journal(tmp_path))
    assert sorted(
        t.params["model.num_latents"] for t in study.trials if t.state == TrialState.COMPLETE
    ) == [2, 4, 8, 16]


def test_ctrl_c_stops_every_worker_cleanly_and_counts_nothing_interrupted_as_finished(
    study_spec, tracking_uri, tmp_path, gate
):
    """Issue 15, item 11: Ctrl-C reaches the launch and its workers (one process group). No
    seed run starts after it, trials say SIGINT (not the SIGTERM the launch forwards), the
    progress line never counts an interrupted trial as finished, and no Optuna warning or
    traceback reaches the console."""
    path = study_spec(
        {
            "name": "ctrlc",
            "search_space": {"model.num_latents": [2, 4, 8, 16]},
            "sampler": {"name": "grid"},
            "seeds": 2,
        },
        # both workers hold in their first seed run (the gate's runs 0 and 1) until Ctrl-C
        base={"data": gate.dataset(steps=[0], runs=[0, 1])},
    )
    command, parent = launch(path, tracking_uri, tmp_path, progress=True)
    client = connect(tracking_uri)
    for run in (0, 1):
        gate.wait(run_step(run, 0), parent)
    signalled_ms = time.time() * 1000
    os.killpg(parent.pid, signal.SIGINT)
    output = parent.communicate(timeout=120)[0]
    assert parent.returncode == 130, output
    assert "Traceback" not in output and "[W " not in output, output
    assert no_run_left_running(client, "ctrlc")
    runs = runs_by_type(client, "ctrlc")
    assert max(r.info.start_time for r in runs["seed"]) < signalled_ms
    killed = [r for r in runs["trial"] if r.info.status == "KILLED"]
    assert len(killed) == 2, [r.info.status for r in runs["trial"]]
    for run in killed:
        assert run.data.tags["latentseg.error"].startswith("interrupted: stopped by SIGINT")
    progress = [line for line in output.splitlines() if line.startswith("trials finished")]
    finished = [int(line.split()[2].split("/")[0]) for line in progress]
    assert all(line.split()[2].endswith("/4") for line in progress), progress
    study = optuna.load_study(study_name="ctrlc", storage=journal(tmp_path))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert max(finished) == len(complete) <= 2, progress


def test_a_relaunch_with_nothing_queued_starts_no_worker(study_spec, tracking_uri, capsys):
    from latentseg.cli import main

    path = study_spec(
        {"name": "idle", "search_space": {"model.num_latents": [2, 4]}, "sampler": {"name": "grid"}}
    )
    first = run_study(str(path), tracking_uri=tracking_uri, progress=False)
    assert first.workers_started == 1 and first.summary["n_complete"] == 2
    argv = ["study", str(path), "--workers", "2", "--tracking-uri", tracking_uri, "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "nothing left to run: study 'idle' had no trial queued" in out
    assert "2 trials (2 complete" in out


def test_when_one_machines_launch_dies_mid_trial_another_launch_finishes_its_trial(
    study_spec, tracking_uri, postgres_db, tmp_path, gate
):
    """Two launches share a PostgreSQL study; one dies whole (parent and workers, SIGKILL, as
    a machine would), its trials recorded as running on another host. The other launch waits
    until their heartbeat lapses (4 s grace here), fails and reruns them, and the grid ends
    complete, each point once, with no MLflow run left RUNNING."""
    path = study_spec(
        {
            "name": "machines",
            "search_space": {"model.num_latents": [2, 4, 8]},
            "sampler": {"name": "grid"},
            "max_retry": 1,
        },
        # the first launch's two workers hold in their first trials until it dies; runs of
        # the second launch do not hold
        base={"data": gate.dataset(steps=[0], runs=[0, 1])},
        name="machines.yaml",
    )
    connect(tracking_uri).search_experiments()  # the store's schema, created once
    env = subprocess_env() | {
        "LATENTSEG_HEARTBEAT_INTERVAL_S": "1",
        "LATENTSEG_HEARTBEAT_GRACE_S": "4",
    }
    command = [
        sys.executable, "-m", "latentseg.cli", "study", str(path), "--storage", postgres_db,
        "--tracking-uri", tracking_uri, "--no-progress", "--workers", "2",
    ]  # fmt: skip
    doomed = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    client = connect(tracking_uri)
    for run in (0, 1):
        gate.wait(run_step(run, 0), doomed)
    os.killpg(doomed.pid, signal.SIGKILL)  # the whole machine goes
    doomed.communicate(timeout=30)
    # Its trials are recorded as running on another machine: then only their lapsing
    # heartbeat, not a process check on this host, can tell that they died.
    from latentseg.study.storage import OWNER_ATTR

    storage = optuna.storages.RDBStorage(postgres_db)
    running = [
        t for t in optuna.load_study(study_name="machines", storage=storage).trials
        if t.state == TrialState.RUNNING
    ]  # fmt: skip
    assert len(running) == 2, running  # both held trials
    for trial in running:
        owner = dict(trial.system_attrs[OWNER_ATTR], host="another-machine")
        storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, owner)
    survivor = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    output = survivor.communicate(timeout=400)[0]
    assert survivor.returncode == 0, output
    study = optuna.load_study(study_name="machines", storage=postgres_db)
    complete = sorted(
        t.params["model.num_latents"] for t in study.trials if t.state == TrialState.COMPLETE
    )
    assert complete == [2, 4, 8]
    dead = [t for t in study.trials if t.state == TrialState.FAIL]
    assert {t.number for t in dead} >= {t.number for t in running}  # failed by the heartbeat
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert no_run_left_running(client, "machines")


def test_the_default_journal_is_the_tracking_stores_so_two_stores_never_disagree(
    study_spec, tmp_path, capsys
):
    """The probe: the same spec with --tracking-uri A, then B, and no --storage. Each store
    keeps its own journal (A/optuna/journal.log, B/optuna/journal.log): the launch on B runs
    the study for B, so B's report has every run its summary names."""
    from latentseg.cli import main

    a, b = (f"sqlite:///{tmp_path / name / 'mlflow.db'}" for name in ("A", "B"))
    path = study_spec({"name": "two", "search_space": {"model.num_latents": [2, 4]}, "sampler": {"name": "grid"}})  # fmt: skip
    assert main(["study", str(path), "--tracking-uri", a, "--no-progress"]) == 0
    assert main(["study", str(path), "--tracking-uri", b, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"Optuna storage journal:{tmp_path / 'B' / 'optuna' / 'journal.log'}" in out
    for store in ("A", "B"):
        storage = make_storage(f"journal:{tmp_path / store / 'optuna' / 'journal.log'}", 0)
        trials = optuna.load_study(study_name="two", storage=storage).trials
        client = connect(f"sqlite:///{tmp_path / store / 'mlflow.db'}")
        for trial in trials:  # every run a trial names is in that store
            assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    assert main(["report", "--study", "two", "--tracking-uri", b]) == 0
    # two stores in one folder keep two journals
    assert default_journal("sqlite:///x/A.db") == Path("x/optuna/A.journal.log")
    assert default_journal("sqlite:///x/mlflow.db") == Path("x/optuna/journal.log")
    assert default_journal("http://127.0.0.1:5000") == DEFAULT_JOURNAL


def test_a_study_relaunched_against_another_tracking_store_is_refused(study_spec, tmp_path, capsys):
    """One journal named for both launches (--storage), but --tracking-uri B after A: the
    study's trials name runs in A; the launch on B is refused (exit 2) naming both stores and
    the way forward, and B gets no parent run that would summarise runs it lacks."""
    from latentseg.cli import main

    a, b = (f"sqlite:///{tmp_path / name / 'mlflow.db'}" for name in ("A", "B"))
    shared = f"journal:{tmp_path / 'shared.log'}"
    path = study_spec({"name": "two", "search_space": {"model.num_latents": [2, 4]}, "sampler": {"name": "grid"}})  # fmt: skip
    flags = ["--storage", shared, "--no-progress"]
    assert main(["study", str(path), "--tracking-uri", a, *flags]) == 0
    capsys.readouterr()
    assert main(["study", str(path), "--tracking-uri", b, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {path}: study 'two' (in {shared}) has its runs in {a}, not in "
        f"{b}: relaunch with --tracking-uri {a}, or keep this store and give the study a new "
        "`name` (or another --storage)"
    )
    client = connect(b)
    experiment = client.get_experiment_by_name("two")
    assert experiment is None or not client.search_runs([experiment.experiment_id])
    assert main(["study", str(path), "--tracking-uri", a, *flags]) == 0  # its own store


def test_a_study_left_in_the_older_shared_journal_is_pointed_at(study_spec, tracking_uri, capsys):
    """Before studies kept their store's journal, every study went to mlruns/optuna/ of the
    working directory. A launch that finds its study only there says how to continue it."""
    from latentseg.cli import main

    spec = {"name": "old", "search_space": {"model.num_latents": [2]}, "sampler": {"name": "grid"}}
    path = study_spec(spec)
    older = ["--storage", f"journal:{DEFAULT_JOURNAL}", "--no-progress"]
    assert main(["study", str(path), "--tracking-uri", tracking_uri, *older]) == 0
    capsys.readouterr()
    assert main(["study", str(path), "--tracking-uri", tracking_uri, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert (
        f"note: a study 'old' is in {DEFAULT_JOURNAL}, the journal every store shared before; "
        f"this launch starts it afresh in {default_journal(tracking_uri)}"
    ) in err
    assert f"pass --storage journal:{DEFAULT_JOURNAL}" in err


def test_a_study_named_with_a_quote_runs_resumes_and_reports(study_spec, tracking_uri, capsys):
    """Its name goes into MLflow search filters (the parent run, orphan recovery, the
    report): quoted, not pasted."""
    from latentseg.cli import main

    spec = {"name": "o'brien", "search_space": {"model.num_latents": [2, 4]}, "sampler": {"name": "grid"}}  # fmt: skip
    path = study_spec(spec)
    assert main(["study", str(path), "--tracking-uri", tracking_uri, "--no-progress"]) == 0
    assert main(["study", str(path), "--tracking-uri", tracking_uri, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["report", "--study", "o'brien", "--tracking-uri", tracking_uri]) == 0
    out = capsys.readouterr().out
    assert "; 2 variants" in out  # both points' seed runs, found by the quoted name
    assert "not attached" not in out  # and the parent run, which the report is attached to
    both = study_spec({**spec, "name": 'o\'brien "the"'}, name="both.yaml")
    assert main(["study", str(both), "--tracking-uri", tracking_uri]) == 2
    assert "holds both ' and \"" in capsys.readouterr().err


def test_a_study_of_two_objectives_runs_on_two_workers_resumes_and_keeps_its_objectives(
    study_spec, tracking_uri, tmp_path, capsys
):
    """Quality against cost: validation mIoU (maximized) and FLOPs per image (minimized),
    searched by TPE on 2 workers. Each trial's values are its seed means, in the spec's
    order and named in the study; the launch prints the front; a relaunch with more trials
    resumes the study; a relaunch that swaps the objectives is refused with one line."""
    from latentseg.cli import main
    from latentseg.study.progress import front

    objectives = [{"metric": "val_miou"}, {"metric": "model_flops_per_image"}]
    spec = {
        "name": "quality-cost",
        "search_space": {"model.num_latents": {"type": "int", "low": 2, "high": 16, "log": True}},
        "objectives": objectives,
        "sampler": {"name": "tpe", "n_startup_trials": 2},
        "seeds": 2,
        "n_trials": 2,
    }
    path = study_spec(spec)
    argv = ["study", str(path), "--workers", "2", "--tracking-uri", tracking_uri, "--no-progress"]
    assert main(argv) == 0
    assert main([*argv, "--n-trials", "3"]) == 0  # resumed: one more trial
    printed = capsys.readouterr().out

    study = optuna.load_study(study_name="quality-cost", storage=journal(tmp_path))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_miou", "model_flops_per_image"]  # optuna-dashboard's axes
    assert len(study.trials) == 3 and all(t.state == TrialState.COMPLETE for t in study.trials)
    client = connect(tracking_uri)
    runs = runs_by_type(client, "quality-cost")
    assert len(runs["study"]) == 2 and no_run_left_running(client, "quality-cost")
    for trial in study.trials:
        (run,) = [
            r for r in runs["trial"] if r.data.tags["latentseg.trial_number"] == str(trial.number)
        ]
        seeds = [r for r in runs["seed"] if r.data.tags["mlflow.parentRunId"] == run.info.run_id]
        assert len(seeds) == 2
        # the values are the seed means: best epoch's val_miou, the model's FLOPs as logged
        miou = [
            max(m.value for m in client.get_metric_history(r.info.run_id, "val_miou"))
            for r in seeds
        ]
        flops = [r.data.metrics["model_flops_per_image"] for r in seeds]
        assert trial.values == pytest.approx([sum(miou) / 2, sum(flops) / 2])
        assert run.data.metrics["model_flops_per_image"] == pytest.approx(trial.values[1])
    # the last launch prints the front of all three trials
    best = front(study.trials, ["maximize", "minimize"])
    assert f"front by seed means (val_miou, model_flops_per_image): {len(best)} trial(s)" in printed
    for trial in best:
        assert f"  trial {trial.number}: val_miou {trial.values[0]:.4g}, " in printed
    # then the report's front, with the seeds' noise, over the study's own objectives (mIoU
    # read on the test split); FLOPs are fixed, so the smallest model is on the front
    assert "Pareto front over test_miou (maximize), model_flops_per_image (minimize)" in printed
    from latentseg.report import ablation_report

    points = ablation_report(study="quality-cost", tracking_uri=tracking_uri, figures=False).front
    assert len(points) == len({t.params["model.num_latents"] for t in study.trials})
    smallest = points.sort_values("model_flops_per_image").iloc[0]
    assert smallest["membership"] == "on the front"

    # optuna-dashboard, served on the study's own journal, names the objectives and shows
    # each trial's per-seed values and its MLflow run
    detail = dashboard_study(tmp_path / "store" / "optuna" / "journal.log", "quality-cost")
    assert detail["objective_names"] == ["val_miou", "model_flops_per_image"]
    shown = {t["number"]: {a["key"]: a["value"] for a in t["user_attrs"]} for t in detail["trials"]}
    for trial in study.trials:
        assert shown[trial.number]["mlflow_run_id"] == trial.user_attrs["mlflow_run_id"]
        for seed in (7, 8):
            assert float(shown[trial.number][f"seed_{seed}_val_miou"]) == pytest.approx(
                trial.user_attrs[f"seed_{seed}_val_miou"]
            )

    swapped = study_spec({**spec, "objectives": objectives[::-1]}, name="swapped.yaml")
    assert main(["study", str(swapped), "--tracking-uri", tracking_uri, "--no-progress"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert (
        error[-1].endswith(
            "study 'quality-cost' exists with direction(s) maximize, minimize, the spec asks "
            "minimize, maximize"
        )
        and len(error) == 1
    ), error


def dashboard_study(journal_path: Path, name: str) -> dict:
    """The study ``name`` as optuna-dashboard's own server (its command, on a loopback port)
    serves it from the journal file: ``/api/studies/<id>``. Skips loudly without the
    ``dashboard`` extra."""
    import shutil
    import urllib.request

    from tests.helpers_processes import free_port, stop_server

    command = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    if command is None:
        pytest.skip(
            "SKIPPED LOUDLY: optuna-dashboard is not installed (pip install -e '.[dashboard]')"
        )
    port = free_port()
    server = subprocess.Popen(
        [command, str(journal_path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"optuna-dashboard exited: {server.communicate()[0]}"
            assert time.monotonic() < deadline, "optuna-dashboard did not answer in 120 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        (study_id,) = [s["study_id"] for s in studies if s["study_name"] == name]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/studies/{study_id}", timeout=30
        ) as r:
            return json.load(r)
    finally:
        stop_server(server)
