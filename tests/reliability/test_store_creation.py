"""Issue 15, item 4: a disk that fills while MLflow creates its SQLite schema. latentseg
creates a store whole or not at all; a store left half-made by anything else (MLflow itself,
an older latentseg) is named in one line that says it holds no runs and how to recover."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from latentseg.cli import main
from latentseg.tracking.store import connect
from tests.conftest import subprocess_env, with_private_mounts

# each test starts the CLI in a new process (and a mount namespace): 13-17 s apiece
pytestmark = pytest.mark.slow

TMPFS = "mount -t tmpfs -o size=128k tmpfs {where}"


def test_a_full_disk_while_creating_the_store_leaves_nothing_half_made(tiny_yaml, tmp_path):
    """The probe: `latentseg train` on a 128 KiB disk. One line, exit 2, and no store file:
    the next command on a disk with room starts cleanly."""
    disk = tmp_path / "disk"
    disk.mkdir()
    config = tiny_yaml({"train": {"epochs": 1}})
    command = (
        f"{sys.executable} -m latentseg.cli train {config} --no-progress "
        f"--tracking-uri sqlite:///{disk}/store/mlflow.db; echo rc=$?; ls -A {disk}/store"
    )
    done = with_private_mounts(TMPFS.format(where=disk), command, tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: cannot create the MLflow tracking store {disk}/store/mlflow.db: database or "
        "disk is full; nothing was created (free some space, or pass another --tracking-uri)"
    ], done.stderr
    listing = done.stdout.split("rc=", 1)[1].split()
    assert listing == ["2", "mlflow.db.lock"]  # exit 2; no store, no temporary file left


def half_made_store(tmp_path):
    """What MLflow's own first open leaves on a disk that fills midway: a copy of it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    kept = tmp_path / "kept"
    kept.mkdir()
    script = f"from mlflow import MlflowClient; MlflowClient('sqlite:///{disk}/mlflow.db').search_experiments()"
    done = with_private_mounts(
        TMPFS.format(where=disk),
        f'{sys.executable} -c "{script}" 2>/dev/null; cp {disk}/mlflow.db {kept}/',
        tmp_path,
    )
    db = kept / "mlflow.db"
    assert done.returncode == 0 and db.is_file(), done.stderr
    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert "experiments" in tables  # MLflow got part of the way
    return db


def test_a_half_made_store_is_named_in_one_line_with_the_way_out(tmp_path, capsys, tiny_yaml):
    db = half_made_store(tmp_path)
    uri = f"sqlite:///{db}"
    for argv in (
        ["report", "--experiment", "tests", "--tracking-uri", uri],
        ["train", str(tiny_yaml({})), "--no-progress", "--tracking-uri", uri],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "[SQL:" not in err, err
        assert err.startswith(f"error: {db} is a half-created MLflow store that holds no runs")
        assert err.endswith(f"delete it (rm {db}) and run again")
    db.unlink()  # the way out it names
    client = connect(uri)
    assert client.search_experiments()[0].name == "Default"


def test_a_store_with_runs_whose_upgrade_was_cut_off_is_never_called_empty(tmp_path):
    db = tmp_path / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    run = client.create_run(client.create_experiment("kept"))
    client.set_terminated(run.info.run_id)
    with sqlite3.connect(db) as con:  # as if a migration died after its first statement
        con.execute("UPDATE alembic_version SET version_num = 'bf29a5ff90ea'")
        con.execute("CREATE TABLE _alembic_tmp_runs (x INTEGER)")
    report = [sys.executable, "-m", "latentseg.cli", "report", "--experiment", "kept"]
    done = subprocess.run(
        [*report, "--tracking-uri", f"sqlite:///{db}"],
        capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert err.startswith(f"error: {db} holds 1 runs but its schema upgrade was cut off"), err
    assert "mlflow db upgrade" in err and "delete" not in err
