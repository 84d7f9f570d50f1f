"""`latentseg server`: a real MLflow tracking server on PostgreSQL with served artifacts."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from latentseg.cli import build_parser, main, server_command
from tests.conftest import subprocess_env, trial_held_at
from tests.helpers import run_step
from tests.helpers_processes import children, free_port, start_server, stop_server, wait_healthy


def command_lines(pid: int) -> list[str]:
    """The command lines of a process and its descendants."""
    lines, todo = [], [pid]
    while todo:
        current = todo.pop()
        proc = Path(f"/proc/{current}")
        try:
            lines.append(proc.joinpath("cmdline").read_text().replace("\0", " "))
            todo += children(current)
        except OSError:
            continue
    return lines


@pytest.mark.slow
def test_a_team_server_on_postgresql_serves_runs_and_artifacts_and_hides_the_password(
    postgres_db, tiny_yaml, tmp_path, monkeypatch
):
    """With --auth: its users in the store's own PostgreSQL database; the client says who it
    is with MLflow's variables; neither password shows in the command line or the output."""
    admin = "adm1n-on-postgres"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    backend = postgres_db.replace("postgres@", "postgres:s3cret-pw@")  # trust auth ignores it
    server = subprocess.Popen(
        [
            sys.executable, "-m", "latentseg.cli", "server", "--backend-store-uri", backend,
            "--artifacts-destination", str(tmp_path / "served"), "--port", str(port),
            "--workers", "1", "--auth",
        ],
        cwd=tmp_path, env=subprocess_env() | {"MLFLOW_AUTH_ADMIN_PASSWORD": admin},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_healthy(url, server)
        assert not [line for line in command_lines(server.pid) if "s3cret" in line or admin in line]
        path = tiny_yaml({"train": {"epochs": 1}})
        assert main(["train", str(path), "--tracking-uri", url, "--no-progress"]) == 0
        client = MlflowClient(url)
        (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
        assert run.info.status == "FINISHED" and "val_miou" in run.data.metrics
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served, not a local path
        best = client.download_artifacts(
            run.info.run_id, "checkpoints/best.safetensors", str(tmp_path)
        )
        assert Path(best).stat().st_size > 0
        assert list((tmp_path / "served").rglob("best.safetensors"))  # stored by the server
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "s3cret" not in output, [line for line in output.splitlines() if "s3cret" in line]
    assert admin not in output
    assert "users in postgresql://postgres@127.0.0.1" in output  # the store's own database
    assert "postgresql://postgres:***@127.0.0.1" in output


def test_server_binds_localhost_unless_told_and_warns_without_allowed_hosts(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the server's state folder (mlruns/) is made here
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "adm1n-password")
    launch = server_command(build_parser().parse_args(["server"]))
    assert launch.option("--host") == "127.0.0.1" and not launch.warnings and not launch.auth
    launch = server_command(build_parser().parse_args(["server", "--host", "0.0.0.0"]))
    assert "without --allowed-hosts" in launch.warnings[0]
    args = build_parser().parse_args(
        ["server", "--host", "0.0.0.0", "--allowed-hosts", "mlflow.lab:5000"]
    )
    launch = server_command(args)
    assert not launch.warnings and launch.option("--allowed-hosts") == "mlflow.lab:5000"


def test_a_server_beyond_loopback_asks_who_its_users_are_or_says_plainly_that_it_does_not(
    monkeypatch, tmp_path, capsys
):
    """Beyond loopback: MLflow's basic-auth app, its users beside a SQLite store, the admin's
    password in the server's environment only; without a password, exit 2 naming what to set;
    --no-auth serves everyone, with a warning; a password file readable by others is refused."""
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    base = [
        "server",
        "--host",
        "0.0.0.0",
        "--allowed-hosts",
        "lab:5000",
        "--backend-store-uri",
        store,
    ]
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set MLFLOW_AUTH_ADMIN_PASSWORD" in err[0] and "--no-auth" in err[0]

    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "short")
    assert main(base) == 2
    assert (
        "MLFLOW_AUTH_ADMIN_PASSWORD: the admin's password has 5 characters; MLflow asks for at least 12"
        in capsys.readouterr().err
    )
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD")

    launch = server_command(build_parser().parse_args([*base, "--no-auth"]))
    assert "--app-name" not in launch.command
    assert "without authentication" in launch.warnings[0]

    secret = tmp_path / "admin-password"
    secret.write_text("adm1n-password\n")
    secret.chmod(0o644)
    assert main([*base, "--admin-password-file", str(secret)]) == 2
    assert "readable by others (mode 644); chmod 600" in capsys.readouterr().err
    secret.chmod(0o600)
    launch = server_command(
        build_parser().parse_args([*base, "--admin-password-file", str(secret)])
    )
    assert launch.option("--app-name") == "basic-auth"
    assert launch.env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "adm1n-password"
    assert "adm1n-password" not in " ".join(launch.command)
    config = Path(launch.env["MLFLOW_AUTH_CONFIG_PATH"])
    assert config.parent == tmp_path / "store" and "adm1n-password" not in config.read_text()
    assert config.stat().st_mode & 0o777 == 0o600  # readable by its owner alone
    assert f"database_uri = sqlite:///{tmp_path / 'store' / 'basic_auth.db'}" in config.read_text()


@pytest.mark.parametrize(
    "uri,message",
    [("http://127.0.0.1:5000", "that is a tracking server"), ("mlruns", "expected postgresql")],
)
def test_server_bad_backend_exits_2(uri, message, capsys):
    assert main(["server", "--backend-store-uri", uri]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_a_study_survives_the_tracking_server_going_away_for_a_few_seconds(
    postgres_db, study_spec, tmp_path, gate
):
    """The server goes away while the first seed run has logged epoch 1 and trains epoch 2,
    and comes back once that epoch has ended (its metrics and checkpoints unsent): the
    study ends with every epoch of every run logged once. The run holds at the gate before
    epochs 2 and 3 (64 samples in batches of 8), so the outage always lands mid-run."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(postgres_db, tmp_path / "served", port, tmp_path)
    try:
        wait_healthy(url, server)
        path = study_spec(
            {
                "name": "outage",
                "search_space": {"model.num_latents": [2, 4]},
                "sampler": {"name": "grid"},
            },
            base={"data": gate.dataset(steps=[8, 16], runs=[0]), "train": {"epochs": 4}},
        )
        study = subprocess.Popen(
            [
                sys.executable, "-m", "latentseg.cli", "study", str(path), "--tracking-uri", url,
                "--no-progress",
            ],
            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        client = MlflowClient(url)
        gate.wait(run_step(0, 8), study)  # epoch 1 trained, epoch 2 not begun
        experiment_id = client.get_experiment_by_name("outage").experiment_id
        deadline = time.monotonic() + 120  # held: nothing but epoch 1's logging is left to do
        while not [
            r
            for r in client.search_runs([experiment_id], "tags.`latentseg.run_type` = 'seed'")
            if "val_miou" in r.data.metrics
        ]:
            if time.monotonic() > deadline:
                study.kill()
                pytest.fail(f"epoch 1 never reached the server:\n{study.communicate()[0]}")
            time.sleep(0.3)
        stop_server(server)  # the server goes away mid-run...
        went_away = time.monotonic()
        gate.release(run_step(0, 8))
        gate.wait(run_step(0, 16), study)  # ...while epoch 2 is trained and logged...
        time.sleep(max(0.0, went_away + 5 - time.monotonic()))  # (away for 5 s at least)
        server = start_server(postgres_db, tmp_path / "served", port, tmp_path)  # ...and returns
        gate.release(run_step(0, 16))
        wait_healthy(url, server)
        output = study.communicate(timeout=300)[0]
        assert study.returncode == 0, output
        experiment_id = client.get_experiment_by_name("outage").experiment_id
        runs = client.search_runs([experiment_id])
        by_type: dict[str, list] = {}
        for run in runs:
            by_type.setdefault(run.data.tags["latentseg.run_type"], []).append(run)
        assert len(by_type["study"]) == 1 and len(by_type["trial"]) == 2  # no duplicates
        assert len(by_type["seed"]) == 2
        for run in by_type["seed"]:
            assert run.info.status == "FINISHED"
            history = client.get_metric_history(run.info.run_id, "val_miou")
            assert sorted(m.step for m in history) == [1, 2, 3, 4]  # no epoch lost, none twice
    finally:
        stop_server(server)


@pytest.mark.slow
def test_three_workers_on_postgresql_and_a_server_with_one_killed_finish_the_grid_once(
    make_postgres_db, study_spec, tmp_path, gate
):
    """Three worker processes share a PostgreSQL study and a tracking server; one is killed
    with SIGKILL mid-trial. Its trial is failed and retried by the others, its MLflow run ends
    FAILED, and every grid point runs to completion exactly once, with its checkpoints and
    attention images downloadable through the server."""
    import os
    import signal

    import optuna
    from optuna.trial import TrialState

    # MLflow and Optuna each keep an alembic_version table: one database each
    mlflow_db, postgres_db = make_postgres_db(), make_postgres_db()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(mlflow_db, tmp_path / "served", port, tmp_path)
    try:
        wait_healthy(url, server)
        path = study_spec(
            {
                "name": "team",
                "search_space": {"model.num_latents": [2, 4, 8, 16]},
                "sampler": {"name": "grid"},
                "max_retry": 1,
            },
            base={
                # the first seed run holds before its first step: the kill lands mid-trial
                "data": gate.dataset(steps=[0], runs=[0]),
                "tracking": {"attention_plots": True},
            },
        )
        study = subprocess.Popen(
            [
                sys.executable, "-m", "latentseg.cli", "study", str(path), "--workers", "3",
                "--storage", postgres_db, "--tracking-uri", url, "--no-progress",
            ],
            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        client = MlflowClient(url)
        # the worker that owns the held trial (recorded on the Optuna trial)
        owner = trial_held_at(gate, "team", postgres_db, study)
        os.kill(owner["pid"], signal.SIGKILL)  # later runs do not hold: the others go on
        output = study.communicate(timeout=400)[0]
        assert study.returncode == 0, output

        trials = optuna.load_study(study_name="team", storage=postgres_db).trials
        complete = sorted(
            t.params["model.num_latents"] for t in trials if t.state == TrialState.COMPLETE
        )
        assert complete == [2, 4, 8, 16]  # each point once
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        experiment_id = client.get_experiment_by_name("team").experiment_id
        runs = client.search_runs([experiment_id])
        assert not [r for r in runs if r.info.status == "RUNNING"]
        by_type: dict[str, list] = {}
        for run in runs:
            by_type.setdefault(run.data.tags["latentseg.run_type"], []).append(run)
        assert len(by_type["study"]) == 1 and len(by_type["trial"]) == len(trials)
        failed = [t for t in trials if t.state == TrialState.FAIL]
        assert len(failed) == 1 and failed[0].user_attrs["fail_reason"] == "worker process died"
        dead = [
            r for r in by_type["trial"]
            if r.data.tags["latentseg.trial_number"] == str(failed[0].number)
        ]  # fmt: skip
        assert dead[0].info.status in ("FAILED", "KILLED")
        finished = next(r for r in by_type["seed"] if r.info.status == "FINISHED")
        paths = [a.path for a in client.list_artifacts(finished.info.run_id, "checkpoints")]
        assert "checkpoints/best.safetensors" in paths
        images = [a.path for a in client.list_artifacts(finished.info.run_id, "images")]
        assert any("predictions" in p for p in images)
        local = client.download_artifacts(finished.info.run_id, "checkpoints", str(tmp_path / "dl"))
        assert (Path(local) / "best.safetensors").stat().st_size > 0
    finally:
        stop_server(server)
