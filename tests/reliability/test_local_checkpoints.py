"""Where a tracked run keeps its checkpoints on this machine, and for how long: under the
store's local state folder (``<store>/checkpoints/RUN_ID``), removed once the run is closed
with every checkpoint in its artifacts (FINISHED or KILLED alike: ``--resume RUN_ID``
fetches them from there), kept while an upload failed, and then resumed from."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from latentseg.errors import StoreWriteError
from latentseg.tracking import run_experiment
from latentseg.tracking.store import local_state_dir
from latentseg.train import TrainCallback

pytestmark = pytest.mark.slow

QUICK = {"tracking": {"attention_plots": False}}
CHECKPOINTS = {"checkpoints/last.ckpt", "checkpoints/best.safetensors"}


class WhereWritten(TrainCallback):
    """Records the folder each checkpoint was written to, as it is written."""

    def __init__(self) -> None:
        self.folders: set[Path] = set()

    def on_checkpoint(self, context, path: Path, kind: str) -> None:
        assert path.is_file()
        self.folders.add(path.parent.resolve())


class CtrlCAfterEpoch(TrainCallback):
    """A Ctrl-C that lands once ``epoch`` is checkpointed and logged."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, context, metrics, improved) -> None:
        if context.state.epoch == self.epoch:
            raise KeyboardInterrupt


class BlockCheckpointUploads(TrainCallback):
    """Makes the run's ``checkpoints/`` artifact folder impossible to create (a dangling
    link in its place), as a full or read-only artifact store would: the upload is an
    OSError. ``unblock()`` frees it again."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self.link: Path | None = None

    def on_train_start(self, context) -> None:
        experiment = self.client.get_experiment_by_name("tests")
        (run,) = self.client.search_runs(
            [experiment.experiment_id], "attributes.status = 'RUNNING'"
        )
        artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
        artifacts.mkdir(parents=True, exist_ok=True)
        self.link = artifacts / "checkpoints"
        self.link.symlink_to(artifacts / "nowhere")

    def unblock(self) -> None:
        assert self.link is not None
        self.link.unlink()


def artifact_paths(client: MlflowClient, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, "checkpoints")}


def epochs_logged(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "val_miou"))


@pytest.mark.parametrize(
    ("uri", "folder"),
    [
        ("sqlite:///mlruns/mlflow.db", "mlruns"),
        ("sqlite:////data/B/mlflow.db", "/data/B"),
        ("sqlite:///:memory:", "mlruns"),
        ("http://mlflow-host:5000", "mlruns"),
        ("postgresql://user@db-host/mlflow", "mlruns"),
    ],
)
def test_the_local_state_folder_is_the_sqlite_files_folder_else_mlruns(uri, folder):
    assert local_state_dir(uri) == Path(folder)


def test_a_finished_run_keeps_its_checkpoints_in_its_artifacts_only(tiny, tmp_path):
    """Checkpoints are written beside a store in another folder (not in the working
    directory's ``mlruns/``), and the local copy goes once the artifacts hold them."""
    store = tmp_path / "elsewhere" / "B"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    written = WhereWritten()
    result = run_experiment(
        tiny({"train": {"epochs": 2}, **QUICK}), tracking_uri=uri, callbacks=[written], progress=False
    )  # fmt: skip
    assert result.status == "FINISHED"
    assert written.folders == {(store / "checkpoints" / result.run_id).resolve()}
    assert result.checkpoint_dir == store / "checkpoints" / result.run_id
    assert not result.checkpoint_dir.exists()
    assert not (tmp_path / "mlruns").exists()  # nothing under the working directory
    assert artifact_paths(MlflowClient(uri), result.run_id) == CHECKPOINTS


def test_a_killed_run_drops_its_local_copy_and_resumes_from_its_artifacts(tiny, tracking_uri):
    config = tiny({"train": {"epochs": 2}, **QUICK})
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tracking_uri=tracking_uri, callbacks=[CtrlCAfterEpoch(1)], progress=False)  # fmt: skip
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "KILLED"
    assert artifact_paths(client, run_id) == CHECKPOINTS
    local = local_state_dir(tracking_uri) / "checkpoints" / run_id
    assert not local.exists()

    resumed = run_experiment(config, tracking_uri=tracking_uri, resume=run_id, progress=False)
    assert resumed.run_id == run_id and resumed.status == "FINISHED"
    assert client.get_run(run_id).info.status == "FINISHED"
    assert epochs_logged(client, run_id) == [1, 2]  # continued after epoch 1, in the same run
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert not local.exists()


def test_checkpoints_that_could_not_be_uploaded_are_kept_and_resumed_from(tiny, tracking_uri):
    """The upload of epoch 1's checkpoint fails: the run ends FAILED naming the folder that
    keeps it. Once the store is writable again, ``--resume RUN_ID`` continues from that
    local copy (the artifacts have none), uploads it, and then removes it."""
    client = MlflowClient(tracking_uri)
    blocker = BlockCheckpointUploads(client)
    with pytest.raises(StoreWriteError, match="the checkpoints are kept at") as failure:
        run_experiment(
            tiny({"train": {"epochs": 1}, **QUICK}), tracking_uri=tracking_uri, callbacks=[blocker], progress=False
        )  # fmt: skip
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    run_id = run.info.run_id
    local = local_state_dir(tracking_uri) / "checkpoints" / run_id
    assert str(failure.value).endswith(f"the checkpoints are kept at {local}")
    assert run.info.status == "FAILED"
    assert {p.name for p in local.iterdir()} == {"last.ckpt", "best.safetensors"}

    blocker.unblock()
    assert artifact_paths(client, run_id) == set()
    resumed = run_experiment(
        tiny({"train": {"epochs": 2}, **QUICK}), tracking_uri=tracking_uri, resume=run_id, progress=False
    )  # fmt: skip
    assert resumed.run_id == run_id and resumed.status == "FINISHED"
    assert epochs_logged(client, run_id) == [
        1,
        2,
    ]  # epoch 1 from the local copy (none in the artifacts)
    assert artifact_paths(client, run_id) == CHECKPOINTS
    assert not local.exists()
