"""Real MLflow (SQLite store under a temp dir): what a user sees in the UI and the client."""

import signal
import subprocess
import sys
import time

import mlflow
import pytest
import torch
from mlflow import MlflowClient

import latentseg
from latentseg.errors import TrackingError
from latentseg.tracking import run_experiment
from latentseg.tracking.store import connect
from latentseg.train import NonFiniteLossError, prepare
from tests.conftest import subprocess_env

pytestmark = pytest.mark.slow


def artifact_paths(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_a_tracked_run_logs_params_metrics_checkpoints_plots_and_model(tiny, tracking_uri):
    config = tiny({"train": {"epochs": 3}, "tracking": {"log_model": True}})
    started = time.perf_counter()
    result = run_experiment(config, tracking_uri=tracking_uri, progress=False)
    elapsed = time.perf_counter() - started
    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and result.status == "FINISHED"
    assert 0 < result.tracking_s < elapsed  # what training waited for tracking

    params = run.data.params
    assert params["model.variant"] == "tutorial" and params["model.num_latents"] == "16"
    assert params["model.num_classes"] == "4"  # resolved from the dataset
    assert params["data.dataset"] == "shapes" and params["optim.lr"] == "0.003"
    tags = run.data.tags
    assert tags["latentseg.variant"] == "tutorial" and tags["latentseg.dataset"] == "shapes"
    assert tags["latentseg.config_hash"] == prepare(config).config.config_hash()
    assert (
        tags["latentseg.torch_version"] == torch.__version__
        and tags["latentseg.mlflow_version"] == mlflow.__version__
    )
    assert tags["latentseg.version"] == latentseg.__version__ and tags["latentseg.device"] == "cpu"
    # how it computed: runs that differ here round differently (the report warns on pairs)
    assert tags["latentseg.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert tags["latentseg.native_kernel"] in ("on", "off")
    assert tags["latentseg.weight_gradient"].startswith(("gemm", "onednn"))

    history = client.get_metric_history(result.run_id, "val_miou")
    assert sorted(m.step for m in history) == [1, 2, 3]
    metrics = run.data.metrics
    assert metrics["best_val_miou"] == max(m.value for m in history)
    best_epoch = int(metrics["best_epoch"])
    assert [m.value for m in history if m.step == best_epoch] == [metrics["best_val_miou"]]
    assert {
        "test_miou",
        "test_pixel_accuracy",
        "test_mdice",
        "val_iou_circle",
        "val_latent_usage_entropy",
        "val_dead_latents",
        "model_params",
        "model_flops_per_image",
    } <= set(metrics)
    # One log_batch per epoch: every scalar of an epoch carries the same timestamp.
    epoch_two = {
        m.timestamp
        for key in ("train_loss", "val_loss", "val_miou", "lr")
        for m in client.get_metric_history(result.run_id, key)
        if m.step == 2
    }
    assert len(epoch_two) == 1

    paths = artifact_paths(client, result.run_id)
    assert {
        "checkpoints/best.safetensors",
        "checkpoints/last.ckpt",
        "config.json",
        "model_summary.json",
    } <= set(paths)
    images = [p for p in paths if p.startswith("images/") and p.endswith(".png")]
    for key in ("predictions", "latent_attention", "expert_assignment"):
        steps = {
            int(p.split("+step+")[1].split("+")[0])
            for p in images
            if p.startswith(f"images/{key}+")
        }
        assert {1, 3} <= steps, (key, steps)  # first and last epoch (and the best)
        assert best_epoch in steps

    # The best model: from the checkpoint alone, and as an MLflow Model that MLflow loads.
    model = latentseg.load_model(result.run_id, tracking_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    served = mlflow.pytorch.load_model(tags["latentseg.model_uri"])
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(served(images), model(images), rtol=1e-5, atol=1e-5)


def test_a_failing_run_ends_failed_with_the_error(tiny, tracking_uri):
    config = tiny(
        {"optim": {"lr": 1e30}, "train": {"epochs": 3}, "tracking": {"attention_plots": False}}
    )
    with pytest.raises(NonFiniteLossError):
        run_experiment(config, tracking_uri=tracking_uri, progress=False)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FAILED"
    assert "non-finite loss at epoch" in run.data.tags["latentseg.error"]


def test_sigterm_kills_the_run_after_a_checkpoint_and_resume_matches_an_uninterrupted_run(
    tiny, tiny_yaml, tracking_uri, tmp_path
):
    updates = {
        "data": {"train_size": 256},
        "train": {"epochs": 6},  # epochs enough left after the first that SIGTERM lands mid-run
        "tracking": {"attention_plots": False},
    }
    path = tiny_yaml(updates)
    command = [
        sys.executable,
        "-m",
        "latentseg.cli",
        "train",
        str(path),
        "--tracking-uri",
        tracking_uri,
        "--no-progress",
    ]
    process = subprocess.Popen(
        command,
        env=subprocess_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for epoch 1's metrics, then stop it mid-run
        time.sleep(0.3)
        try:
            client = client or connect(tracking_uri)  # under the schema lock
            runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
        except Exception:
            continue
        if runs and "val_miou" in runs[0].data.metrics and runs[0].info.status == "RUNNING":
            break
    else:
        process.kill()
        pytest.fail(f"no epoch logged within 120 s:\n{process.communicate()[0]}")
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 130, output
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "KILLED"
    assert "checkpoints/last.ckpt" in artifact_paths(client, run.info.run_id)

    elsewhere = tmp_path / "elsewhere"  # resume from another folder: checkpoints come from MLflow
    elsewhere.mkdir()
    resumed = subprocess.run(
        [*command, "--resume", run.info.run_id],
        env=subprocess_env(),
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # every epoch once, none lost, none twice

    again = subprocess.run(
        [*command, "--resume", run.info.run_id],
        env=subprocess_env(),
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2 and "already FINISHED its 6 epochs" in again.stderr

    reference = run_experiment(tiny(updates), tracking_uri=tracking_uri, progress=False)
    expected = client.get_run(reference.run_id).data.metrics
    for key in ("best_val_miou", "test_miou", "test_loss", "val_loss", "train_loss"):
        assert run.data.metrics[key] == expected[key], key


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    """Study workers and parallel launches open a fresh SQLite store together; unserialised,
    MLflow's schema creation races (duplicate tables, half-applied migrations)."""
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    script = (
        "import sys; from latentseg.tracking.store import connect; "
        "connect(sys.argv[1]).create_experiment(sys.argv[2])"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, uri, f"exp{i}"],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, "\n".join(outputs)
    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert {f"exp{i}" for i in range(4)} <= names


def test_resume_of_an_unknown_run_is_a_clear_error(tiny, tracking_uri):
    with pytest.raises(TrackingError, match="no such MLflow run"):
        run_experiment(tiny(), tracking_uri=tracking_uri, resume="0123456789abcdef", progress=False)
    with pytest.raises(TrackingError, match="no such checkpoint file, and no such MLflow run"):
        run_experiment(tiny(), tracking_uri=tracking_uri, resume="/nope/last.ckpt", progress=False)


def test_unreachable_tracking_server_fails_fast(tiny):
    started = time.monotonic()
    with pytest.raises(TrackingError, match="not reachable"):
        run_experiment(tiny(), tracking_uri="http://127.0.0.1:9", progress=False)
    assert time.monotonic() - started < 30


def test_tracking_off_trains_with_local_checkpoints(tiny, tmp_path):
    result = run_experiment(tiny({"tracking": {"enabled": False}}), progress=False)
    assert result.run_id is None and (result.checkpoint_dir / "best.safetensors").exists()
    assert result.tracking_s == 0
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_a_bad_value_given_with_set_is_blamed_on_the_flag(tiny_yaml, tracking_uri, capsys):
    from latentseg.cli import main

    path = tiny_yaml()
    code = main(["train", str(path), "--set", "data.dataset=nope", "--tracking-uri", tracking_uri])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}: data.dataset: Unknown dataset 'nope'" in err
    assert err.rstrip().endswith("(data.dataset from --set data.dataset=nope)")


@pytest.mark.slow
def test_resume_and_load_model_leave_nothing_in_the_temp_folder(
    tiny, tracking_uri, tmp_path, monkeypatch
):
    """``load_model(run_id)`` and ``--resume RUN_ID`` (accepted or refused) fetch checkpoints
    into folders of their own and remove them: the system temp folder ends as it began."""
    import tempfile

    import latentseg
    from latentseg.errors import TrackingError
    from latentseg.tracking import run_experiment

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    config = tiny({"train": {"epochs": 1}})
    result = run_experiment(config, tracking_uri=tracking_uri, progress=False)
    before = sorted(p.name for p in temp.iterdir())
    latentseg.load_model(result.run_id, tracking_uri=tracking_uri)
    with pytest.raises(TrackingError, match="already FINISHED"):
        run_experiment(config, tracking_uri=tracking_uri, resume=result.run_id, progress=False)  # fmt: skip
    longer = tiny({"train": {"epochs": 2}})
    resumed = run_experiment(longer, tracking_uri=tracking_uri, resume=result.run_id, progress=False)  # fmt: skip
    assert resumed.run_id == result.run_id and resumed.status == "FINISHED"
    left = sorted(p.name for p in temp.iterdir() if p.name.startswith("latentseg-"))
    assert left == [n for n in before if n.startswith("latentseg-")] == []


def test_a_resume_with_a_changed_config_is_refused_and_leaves_the_run_as_it_was(
    tiny, tracking_uri, tmp_path
):
    """Only train.epochs, early stopping, device, threads and tracking keys may change on a
    resume: anything else would continue a run under a config it was not trained with."""
    from latentseg.errors import ConfigError

    config = tiny({"train": {"epochs": 1}, "tracking": {"attention_plots": False}})
    result = run_experiment(config, tracking_uri=tracking_uri, progress=False)
    changed = tiny(
        {"train": {"epochs": 2}, "optim": {"lr": 0.01}, "tracking": {"attention_plots": False}}
    )
    refusal = f"cannot resume run {result.run_id}: the config differs in optim.lr: 0.003 -> 0.01"
    with pytest.raises(ConfigError, match=refusal):
        run_experiment(changed, tracking_uri=tracking_uri, resume=result.run_id, progress=False)
    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and "latentseg.resumed_with" not in run.data.tags
    assert sorted(m.step for m in client.get_metric_history(result.run_id, "val_miou")) == [1]

    # A checkpoint file is checked the same way, before any run is created.
    kept = tiny({"train": {"epochs": 1}, "tracking": {"enabled": False}})
    local = run_experiment(kept, progress=False)
    experiment_id = client.get_experiment_by_name("tests").experiment_id
    with pytest.raises(ConfigError, match="the config differs in optim.lr: 0.003 -> 0.01"):
        run_experiment(
            changed,
            tracking_uri=tracking_uri,
            resume=str(local.checkpoint_dir / "last.ckpt"),
            progress=False,
        )
    assert len(client.search_runs([experiment_id])) == 1


def test_the_mlflow_model_is_logged_to_the_runs_store_not_the_process_default(
    tiny, tracking_uri, tmp_path
):
    """The model logger writes where its client points, whatever MLflow's process-wide
    tracking URI says, and leaves that URI as it found it."""
    from latentseg.tracking.model_export import log_mlflow_model
    from latentseg.train import Trainer

    trainer = Trainer(prepare(tiny({"train": {"epochs": 1}})), tmp_path / "checkpoints")
    trainer.fit()
    client = connect(tracking_uri)
    experiment_id = client.create_experiment("models")
    run_id = client.create_run(experiment_id).info.run_id
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    mlflow.set_tracking_uri(elsewhere)
    try:
        model_uri = log_mlflow_model(trainer.context, client, run_id)
        assert mlflow.get_tracking_uri() == elsewhere
    finally:
        mlflow.set_tracking_uri(None)
    assert not (tmp_path / "elsewhere.db").exists()
    (logged,) = client.search_logged_models([experiment_id])
    assert model_uri == f"models:/{logged.model_id}" and logged.source_run_id == run_id
    assert client.get_run(run_id).data.tags["latentseg.model_uri"] == model_uri
