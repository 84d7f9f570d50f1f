"""The MLflow UI link a study prints, followed as a user would: the printed `latentseg ui`
command on its store, then the printed page in headless Chromium. MLflow 3 opens an
experiment in its GenAI view ("Evaluation runs", traces) unless the link asks for the
model-training view; the user must land on the study's runs table."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

from latentseg.cli import main
from latentseg.tracking.store import ui_hint
from tests.conftest import subprocess_env
from tests.helpers_processes import free_port, wait_healthy

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]  # fmt: skip


def test_every_hint_asks_for_the_model_training_view_of_its_own_store():
    default = ui_hint("sqlite:///mlruns/mlflow.db", "3", "abc")
    assert default == (
        "open it: latentseg ui   then "
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    other = ui_hint("sqlite:////data/B.db", "2")
    assert other.startswith("open it: latentseg ui --tracking-uri sqlite:////data/B.db   then ")
    assert other.endswith("/#/experiments/2/runs?workflowType=machine_learning")
    server = ui_hint("http://me:secret@host:5000/", "4", "r")
    assert (
        server
        == "open it: http://me:***@host:5000/#/experiments/4/runs/r?workflowType=machine_learning"
    )


@pytest.mark.slow
def test_the_printed_link_opens_the_studys_runs_table_in_chromium(study_spec, tmp_path, capsys):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip(
            "SKIPPED LOUDLY: Chromium is not installed (make setup installs Debian's chromium)"
        )
    uri = f"sqlite:///{tmp_path / 'B' / 'mlflow.db'}"  # not the default store
    spec = {
        "name": "ui",
        "search_space": {"model.num_latents": [2, 4]},
        "sampler": {"name": "grid"},
    }
    assert main(["study", str(study_spec(spec)), "--tracking-uri", uri, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    hint = next(line for line in printed.splitlines() if line.startswith("open it: "))
    command, url = re.fullmatch(r"open it: (latentseg ui .*?)   then (\S+)", hint).groups()
    assert f"--tracking-uri {uri}" in command
    parent = re.search(r"MLflow parent run (\w+)", printed).group(1)

    port = free_port()
    argv = [os.path.join(os.path.dirname(sys.executable), "latentseg"), *shlex.split(command)[1:]]
    server = subprocess.Popen(
        [*argv, "--port", str(port)], cwd=tmp_path, env=subprocess_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server)
        page = url.replace("127.0.0.1:5000", f"127.0.0.1:{port}")
        dom = subprocess.run(
            [chromium, *FLAGS, "--window-size=1300,900", "--virtual-time-budget=20000", "--dump-dom", page],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        # a seed run's page lists its data (issue 15, item 16): name (digest) per split
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        seed_run = next(r for r in client.search_runs(experiments) if r.inputs.dataset_inputs)
        inputs = seed_run.inputs.dataset_inputs
        run_page = page.replace("/runs?", f"/runs/{seed_run.info.run_id}?")
        run_dom = subprocess.run(
            [chromium, *FLAGS, "--window-size=1300,900", "--virtual-time-budget=20000", "--dump-dom", run_page],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    from mlflow import MlflowClient

    run_name = MlflowClient(uri).get_run(parent).info.run_name
    assert run_name in dom  # the study's parent run, a row of the runs table
    assert "Evaluation runs" not in dom  # not the GenAI view
    assert "Datasets" in run_dom and len(inputs) == 3
    # the page shows the first split's "name (digest)" and folds the others under "+N"
    shown = [i for i in inputs if f"{i.dataset.name} ({i.dataset.digest})" in run_dom]
    assert shown, [f"{i.dataset.name} ({i.dataset.digest})" for i in inputs]
