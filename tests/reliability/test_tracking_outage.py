"""Item 7: the tracking server goes away in the middle of a run, for longer than MLflow's
own client retries would wait: training goes on, and every metric and checkpoint arrives
once the server is back, in the one run."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from latentseg.train.checkpoint import load_training_state
from tests.conftest import subprocess_env
from tests.helpers_processes import free_port, start_server, stop_server, wait_healthy

pytestmark = pytest.mark.slow

EPOCHS = 8


def _poll(predicate, process, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"training exited while waiting for {what}:\n{process.communicate()[0]}")
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - the store or the file may not be there yet
            value = None
        if value:
            return value
        time.sleep(0.3)
    process.kill()
    pytest.fail(f"timed out waiting for {what}:\n{process.communicate()[0]}")


def test_training_goes_on_through_a_server_outage_and_everything_arrives_after(tiny_yaml, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    backend = f"sqlite:///{tmp_path / 'served' / 'mlflow.db'}"
    server = start_server(backend, tmp_path / "served" / "artifacts", port, tmp_path)
    config = tiny_yaml(
        {
            "data": {"train_size": 256},
            "train": {"epochs": EPOCHS},
            "tracking": {"experiment": "outage", "attention_plots": True},
        }
    )
    training = None
    try:
        wait_healthy(url, server)
        training = subprocess.Popen(
            [sys.executable, "-m", "latentseg.cli", "train", str(config), "--tracking-uri", url,
             "--no-progress"],
            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        client = MlflowClient(url)

        def first_epoch_logged():
            experiment = client.get_experiment_by_name("outage")
            runs = experiment and client.search_runs([experiment.experiment_id])
            return runs and "val_miou" in runs[0].data.metrics and runs[0].info.run_id

        run_id = _poll(first_epoch_logged, training, 180, "the first epoch to be logged")
        last = tmp_path / "mlruns" / "checkpoints" / run_id / "last.ckpt"
        stop_server(server)  # the server goes away...
        at_outage = load_training_state(last)["state"]["epoch"]
        assert at_outage < EPOCHS - 2, "training finished too early to test an outage"
        # ...and training goes on without it: two more epochs checkpointed locally
        _poll(
            lambda: load_training_state(last)["state"]["epoch"] >= at_outage + 2,
            training,
            180,
            "training to go on while the server is down",
        )
        server = start_server(backend, tmp_path / "served" / "artifacts", port, tmp_path)
        output = training.communicate(timeout=300)[0]
        assert training.returncode == 0, output
        assert "unreachable" in output and "is back" in output
        wait_healthy(url, server)
        experiment = client.get_experiment_by_name("outage")
        runs = client.search_runs([experiment.experiment_id])
        assert [r.info.run_id for r in runs] == [run_id]  # one run, no duplicate
        assert runs[0].info.status == "FINISHED"
        history = client.get_metric_history(run_id, "val_miou")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))  # each epoch once
        assert "test_miou" in runs[0].data.metrics
        checkpoints = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
        assert {"checkpoints/last.ckpt", "checkpoints/best.safetensors"} <= checkpoints
    finally:
        if training is not None and training.poll() is None:
            training.kill()
        if server.poll() is None:
            stop_server(server)
