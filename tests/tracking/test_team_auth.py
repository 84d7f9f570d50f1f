"""A team tracking server that lets in only its team: a real ``latentseg server --auth`` on a
loopback port (MLflow's basic-auth app, users beside the SQLite store), real users made with
MLflow's own auth client, and real studies against it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from latentseg.cli import main
from tests.conftest import subprocess_env
from tests.helpers_processes import free_port, stop_server, wait_healthy

pytestmark = pytest.mark.slow

ADMIN_PASSWORD = "adm1n-Secret-7f3a"
ALICE_PASSWORD = "al1ce-Secret-91bc"
BOB_PASSWORD = "b0b-Secret-44de"
WRONG_PASSWORD = "wr0ng-Secret-0000"


def as_user(monkeypatch, user: str | None, password: str | None = None) -> None:
    """MLflow's own credentials for this process (and the workers it starts)."""
    for name, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def test_a_team_server_asks_who_everyone_is_and_lets_each_write_only_where_granted(
    study_spec, tmp_path, monkeypatch, capsys
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    env = subprocess_env() | {"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with open(log, "w") as out:
        server = subprocess.Popen(
            [
                sys.executable, "-m", "latentseg.cli", "server", "--auth", "--backend-store-uri",
                f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", "--artifacts-destination",
                str(tmp_path / "served"), "--port", str(port), "--workers", "1",
            ],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_healthy(url, server)
        # nobody: 401, from the server itself
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
        assert info.value.code == 401

        # the admin makes two users with MLflow's own auth client
        from mlflow.server import get_app_client

        as_user(monkeypatch, "admin", ADMIN_PASSWORD)
        admin = get_app_client("basic-auth", tracking_uri=url)
        admin.create_user("alice", ALICE_PASSWORD)
        admin.create_user("bob", BOB_PASSWORD)

        spec = {
            "name": "team",
            "search_space": {"model.num_latents": [2, 4]},
            "sampler": {"name": "grid"},
            "seeds": 2,
        }
        path = study_spec(spec, base={"tracking": {"experiment": "team"}})
        journal = tmp_path / "journal.log"
        argv = ["study", str(path), "--workers", "2", "--tracking-uri", url,
                "--storage", f"journal:{journal}", "--no-progress"]  # fmt: skip

        # a wrong password: one line naming the server and what to set; nothing queued
        as_user(monkeypatch, "alice", WRONG_PASSWORD)
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"error: MLflow tracking server {url} refused user 'alice': check the password in "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials)"
        ]
        assert not journal.exists() or not optuna.get_all_study_names(
            optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        )
        as_user(monkeypatch, None)
        assert main(argv) == 2
        assert "asks who you are: set MLFLOW_TRACKING_USERNAME" in capsys.readouterr().err

        # alice, with her password: the grid runs once on 2 workers (who inherit who she is)
        as_user(monkeypatch, "alice", ALICE_PASSWORD)
        assert main(argv) == 0
        capsys.readouterr()
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("team")
        seeds = client.search_runs([experiment.experiment_id], "tags.`latentseg.run_type` = 'seed'")
        ran = sorted(
            (r.data.params["model.num_latents"], r.data.params["train.seed"]) for r in seeds
        )
        assert ran == sorted({(n, s) for n, s in ran}) and len(ran) == 4
        assert all(r.info.status == "FINISHED" for r in seeds)
        assert (
            main(
                ["report", "--study", "team", "--tracking-uri", url, "-o", str(tmp_path / "report")]
            )
            == 0
        )
        capsys.readouterr()

        # bob may read alice's experiment but not write to it: 403 ...
        as_user(monkeypatch, "bob", BOB_PASSWORD)
        bob = MlflowClient(url)
        assert bob.get_experiment(experiment.experiment_id).name == "team"
        with pytest.raises(MlflowException) as denied:
            bob.create_run(experiment.experiment_id)
        assert denied.value.get_http_status_code() == 403
        # ... until the admin grants it
        as_user(monkeypatch, "admin", ADMIN_PASSWORD)
        admin.grant_user_permission("bob", "experiment", experiment.experiment_id, "EDIT")
        as_user(monkeypatch, "bob", BOB_PASSWORD)
        run = bob.create_run(experiment.experiment_id)
        bob.set_terminated(run.info.run_id)

        # no password in any run's params or tags
        as_user(monkeypatch, "admin", ADMIN_PASSWORD)
        everything = MlflowClient(url).search_runs([experiment.experiment_id])
        logged = " ".join(
            f"{k}={v}" for r in everything for k, v in {**r.data.params, **r.data.tags}.items()
        )
        for secret in (ADMIN_PASSWORD, ALICE_PASSWORD, BOB_PASSWORD, WRONG_PASSWORD):
            assert secret not in logged
    finally:
        stop_server(server)
    # ... nor in the server's log, the report, the journal or the store's folder's text files
    files = [log, journal, *Path(tmp_path / "report").rglob("*.*")]
    files += [p for p in (tmp_path / "store").iterdir() if p.suffix in (".ini", ".log")]
    for file in files:
        text = file.read_bytes()
        for secret in (ADMIN_PASSWORD, ALICE_PASSWORD, BOB_PASSWORD, WRONG_PASSWORD):
            assert secret.encode() not in text, file
