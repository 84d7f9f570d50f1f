"""Shared fixtures: every test runs in its own temporary folder (so ``mlruns/`` state never
touches the checkout) against a real SQLite MLflow store there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from latentseg.config import ExperimentConfig

torch.set_num_threads(1)  # two xdist workers share this 2-core machine

ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["tests.ordering"]  # longest tests first (tests/durations.json)

TINY = {
    "model": {"variant": "tutorial"},
    "data": {
        "dataset": "shapes",
        "params": {"image_size": 32},
        "batch_size": 8,
        "train_size": 64,
        "val_size": 16,
        "test_size": 16,
    },
    "optim": {"lr": 0.003},
    "train": {"epochs": 2, "seed": 7, "threads": 1, "plot_samples": 2},
    "tracking": {"experiment": "tests", "log_model": False},
}


def deep_update(base: dict, updates: dict) -> dict:
    out = dict(base)
    for key, value in updates.items():
        out[key] = deep_update(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory) -> Path:
    """A new SQLite store's file as latentseg creates it (MLflow's schema, no experiment yet),
    built once per test process: building the schema takes seconds, a copy milliseconds."""
    from latentseg.tracking.store import _create_sqlite_store

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    _create_sqlite_store(path)
    return path


@pytest.fixture
def tracking_uri(tmp_path, _empty_store) -> str:
    """A new, empty SQLite store in the test's folder: a copy of :func:`_empty_store`, which
    the first client opens as it would a store it had just created (its Default experiment
    and artifact root are made then, in the test's folder). Tests of creating a store use a
    path of their own (tests/reliability/test_store_creation.py)."""
    import shutil

    path = tmp_path / "store" / "mlflow.db"
    path.parent.mkdir()
    shutil.copyfile(_empty_store, path)
    return f"sqlite:///{path}"


@pytest.fixture
def tiny():
    """``tiny(**section_updates)`` -> a small, fast ExperimentConfig."""

    def make(updates: dict | None = None) -> ExperimentConfig:
        return ExperimentConfig.model_validate(deep_update(TINY, updates or {}))

    return make


@pytest.fixture
def tiny_yaml(tmp_path):
    """``tiny_yaml(updates)`` -> path of a small experiment YAML."""

    def make(updates: dict | None = None, name: str = "tiny.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(deep_update(TINY, updates or {})))
        return path

    return make


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = str(ROOT)
    return env


def with_private_mounts(mounts: str, command: str, cwd):
    """Run the shell line ``command`` after the shell line ``mounts`` in a private mount
    namespace (util-linux ``unshare -m``): the mounts bind that process alone, root included,
    and vanish with it. Skips loudly where nothing may be mounted."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        pytest.skip("SKIPPED LOUDLY: util-linux unshare is needed for a private mount")
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{{ {mounts}; }} || exit 99; {command}"], cwd=cwd,
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode == 99:
        pytest.skip(f"SKIPPED LOUDLY: cannot mount here: {done.stderr.strip()}")
    return done


def launch_study(path, storage: str, tracking_uri: str, cwd):
    """A `latentseg study` process on ``storage`` (as on another machine), output captured."""
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "latentseg.cli", "study", str(path), "--storage", storage,
        "--tracking-uri", tracking_uri, "--no-progress",
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.fixture
def make_gate(tmp_path):
    """``make_gate(name)`` -> a new :class:`tests.helpers.Gate`, the folder ``name`` in the
    test's folder. Every one is opened at teardown, so that no process the test started is
    left held when it fails."""
    from tests.helpers import Gate

    made = []

    def make(name: str = "gate"):
        made.append(Gate(tmp_path / name))
        return made[-1]

    yield make
    for gate in made:
        gate.open()


@pytest.fixture
def gate(make_gate):
    """A :class:`tests.helpers.Gate` in the test's folder, opened at teardown."""
    return make_gate()


def trial_held_at(gate, name: str, storage: str, process, run: int = 0) -> dict:
    """The Optuna owner record of the RUNNING trial of the study ``name`` whose worker holds
    at ``gate`` before the first training batch of run ``run`` (the gate's numbering; the
    study trains on ``gate.dataset()``). A kill or stop of that worker lands mid-trial, after
    the trial's MLflow runs exist, and before the trial can end. Fails the test when the
    launch ``process`` ends first or nothing is held in time."""
    import optuna
    from optuna.trial import TrialState

    from latentseg.study.storage import OWNER_ATTR
    from tests.helpers import run_step

    held = gate.wait(run_step(run, 0), process)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    for trial in trials:
        owner = trial.system_attrs.get(OWNER_ATTR)
        if trial.state == TrialState.RUNNING and owner and int(owner["pid"]) == held["pid"]:
            return owner
    raise AssertionError(
        f"process {held['pid']}, held at the gate, owns no RUNNING trial of study {name!r}: "
        f"{[(t.number, t.state.name, t.system_attrs.get(OWNER_ATTR)) for t in trials]}"
    )


@pytest.fixture
def study_spec(tmp_path, tiny_yaml):
    """``study_spec(spec_updates, base_updates)`` -> path of a study YAML over a tiny experiment."""

    def make(spec: dict, base: dict | None = None, name: str = "study.yaml"):
        base_path = tiny_yaml(
            {"tracking": {"attention_plots": False}, **(base or {})}, name=f"base-{name}"
        )
        path = tmp_path / name
        path.write_text(yaml.safe_dump({"experiment": base_path.name, **spec}))
        return path

    return make


def _postgres_url():
    """A fresh database on the local PostgreSQL server, or None (with the reason)."""
    try:
        import psycopg
    except ImportError:
        return None, "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        connection = psycopg.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3
        )
    except psycopg.OperationalError as exc:
        return None, f"no PostgreSQL server on 127.0.0.1:5432 ({exc})"
    connection.close()
    return "postgresql://postgres@127.0.0.1:5432/", None


@pytest.fixture
def make_postgres_db():
    """``make_postgres_db()`` -> the URL of a fresh database on the local PostgreSQL server,
    dropped after the test (the bench's scratch databases); skips (loudly) where no server
    is reachable."""
    import contextlib

    from latentseg.postgres import scratch_database

    base, reason = _postgres_url()
    if base is None:
        pytest.skip(f"SKIPPED LOUDLY: PostgreSQL storage test needs a server: {reason}")
    with contextlib.ExitStack() as made:
        yield lambda: made.enter_context(scratch_database(base + "postgres", "latentseg_test_"))


@pytest.fixture
def postgres_server() -> str:
    """The URL of the local PostgreSQL server's ``postgres`` database, for code that makes
    databases of its own (the bench); skips (loudly) where no server is reachable."""
    base, reason = _postgres_url()
    if base is None:
        pytest.skip(f"SKIPPED LOUDLY: this test needs a PostgreSQL server: {reason}")
    return base + "postgres"


@pytest.fixture
def postgres_db(make_postgres_db):
    return make_postgres_db()
