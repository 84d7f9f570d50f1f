"""Checkpoint and storage faults (issue 8, items 5, 8 and 11): SIGKILL while checkpoints are
being written, a full disk or unwritable ``mlruns/``, and checkpoints carrying a pickle payload.
Every training here is a real ``latentseg train`` process on a tiny config."""

import ast
import json
import os
import pickle
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from latentseg import load_model
from latentseg.errors import CheckpointError
from latentseg.tracking import run_experiment
from latentseg.train.checkpoint import load_model_file, load_training_state, read_weights
from tests.conftest import ROOT, subprocess_env
from tests.helpers import Gate, gated_command, run_step

pytestmark = pytest.mark.slow

# One optimizer step and one small val pass per epoch: a checkpoint write every few ms.
FAST_EPOCHS = {
    "data": {"train_size": 8, "val_size": 8, "test_size": 8, "batch_size": 8},
    "train": {"epochs": 10_000, "steps_per_epoch": 1, "plot_samples": 1},
    "tracking": {"enabled": False},
}
CHECKPOINTS = {"last.ckpt", "best.safetensors"}


def train_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "latentseg.cli", "train", str(config), *extra]


def temporaries(folder: Path | None) -> set[str]:
    """The atomic writer's temporary files (``.last.ckpt.XXXX.tmp``) in ``folder``."""
    if folder is None or not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")}


def kill_at_a_write(process, gate: Gate, writes: int, mid_write: bool, rng) -> Path:
    """SIGKILL ``process`` (its checkpoint writes held at ``gate``) at its ``writes``-th
    checkpoint write, counting only writes made once a ``last.ckpt`` exists (a fresh run is
    first let write one to resume from): while that write is held with its temporary file
    complete and not yet in place (``mid_write``), or at a random instant up to 30 ms after
    it is let go. Returns the checkpoint folder."""
    counted, number = 0, 0
    while True:
        name = f"write-{number}"
        folder = Path(gate.wait(name, process)["target"]).parent
        counted += (folder / "last.ckpt").exists()
        if counted == writes:
            break
        gate.release(name)
        number += 1
    if not mid_write:
        gate.release(name)
        time.sleep(rng.uniform(0, 0.03))
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    return folder


def test_sigkill_during_checkpoint_writes_always_leaves_a_loadable_last_checkpoint_and_resume_continues(
    tiny_yaml, tmp_path, make_gate
):
    """Item 5: kill a training process again and again, often while it writes a checkpoint;
    ``last.ckpt`` always loads, no progress that was saved is lost, and a final ``--resume``
    continues from the recorded epoch to the end."""
    config = tiny_yaml(FAST_EPOCHS)
    rng = random.Random(8)
    folder: Path | None = None
    saved_epoch, killed_mid_write = 0, 0

    for attempt in range(6):  # three kills at a held write, three between writes
        resume = ("--resume", str(folder / "last.ckpt")) if folder else ()
        gate = make_gate(f"gate-{attempt}")  # the write numbers start again with the process
        process = subprocess.Popen(
            gated_command(gate, "train", str(config), "--no-progress", *resume),
            cwd=tmp_path,
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        before = temporaries(folder)
        mid_write = attempt % 2 == 1
        folder = kill_at_a_write(process, gate, rng.randint(1, 3), mid_write, rng)
        orphans = temporaries(folder) - before
        killed_mid_write += bool(orphans)
        if mid_write:  # killed at a held write: its temporary file stays behind
            assert orphans, "a kill at a held write left no temporary file"

        names = {p.name for p in folder.iterdir()}
        assert names - temporaries(folder) <= CHECKPOINTS, names  # a temporary is never "last"
        assert "last.ckpt" in names
        state = load_training_state(folder / "last.ckpt")  # always complete, never torn
        epoch = state["state"]["epoch"]
        assert epoch >= saved_epoch, f"saved epoch went back from {saved_epoch} to {epoch}"
        assert [int(h["epoch"]) for h in state["state"]["history"]] == list(range(1, epoch + 1))
        if "best.safetensors" in names:
            read_weights(folder / "best.safetensors")
        saved_epoch = epoch
    assert killed_mid_write, "no kill landed while a checkpoint was being written"
    assert saved_epoch >= 1

    finished = subprocess.run(
        train_command(
            config,
            "--resume",
            str(folder / "last.ckpt"),
            "--set",
            f"train.epochs={saved_epoch + 2}",
        ),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    trained = [int(m) for m in re.findall(r"^epoch (\d+)/", finished.stderr, re.MULTILINE)]
    assert trained == [saved_epoch + 1, saved_epoch + 2], finished.stderr  # not from epoch 1
    state = load_training_state(folder / "last.ckpt")["state"]
    assert state["epoch"] == saved_epoch + 2
    assert [int(h["epoch"]) for h in state["history"]] == list(range(1, saved_epoch + 3))


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    for fragment in fragments:
        assert fragment in line, line
    return line


def test_a_full_disk_while_writing_last_checkpoint_is_a_clear_error_and_keeps_the_previous_one(
    tiny_yaml, tmp_path
):
    """Item 8, disk full: writes beyond a file-size limit fail (RLIMIT_FSIZE, SIGXFSZ
    ignored: ``write`` returns EFBIG as it returns ENOSPC on a full disk), so the resumed run
    cannot write its ``last.ckpt``. The error names the file, the run exits 2 and the previous
    ``last.ckpt`` stays in place, complete, with no temporary file left."""
    config = tiny_yaml({**FAST_EPOCHS, "train": {**FAST_EPOCHS["train"], "epochs": 2}})
    first = subprocess.run(
        train_command(config, "--no-progress"),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert first.returncode == 0, first.stderr
    (folder,) = (tmp_path / "mlruns" / "checkpoints").glob("local-*")
    last = folder / "last.ckpt"
    good = last.read_bytes()
    limit = len(good) // 2  # room for best.safetensors (weights only), not for last.ckpt

    def full_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        train_command(config, "--no-progress", "--resume", str(last), "--set", "train.epochs=4"),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=full_disk,
    )
    assert_one_line_error(done, "cannot write checkpoint", str(last))
    assert last.read_bytes() == good
    assert load_training_state(last)["state"]["epoch"] == 2
    assert not temporaries(folder)


@pytest.mark.parametrize("obstacle", ["a file where checkpoints/ must be", "checkpoints/ on /sys"])
def test_an_unwritable_checkpoint_folder_is_a_clear_error_and_the_run_ends_failed(
    obstacle, tiny_yaml, tracking_uri, tmp_path
):
    """Item 8, read-only: works as root too (chmod does not stop root). The store's
    ``checkpoints`` is a regular file, or a link into sysfs, where nobody may create folders."""
    (tmp_path / "store").mkdir(exist_ok=True)  # the tracking_uri fixture's store lies there
    if obstacle.endswith("/sys"):
        if not Path("/sys").is_dir():
            pytest.skip("SKIPPED LOUDLY: no /sys on this system")
        (tmp_path / "store" / "checkpoints").symlink_to("/sys")
    else:
        (tmp_path / "store" / "checkpoints").write_text("not a folder\n")
    config = tiny_yaml(
        {
            "data": FAST_EPOCHS["data"],
            "train": {"epochs": 1, "plot_samples": 1},
            "tracking": {"attention_plots": False},
        }
    )
    done = subprocess.run(
        train_command(config, "--no-progress", "--tracking-uri", tracking_uri),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert_one_line_error(done, "cannot write checkpoint", f"store/checkpoints/{run.info.run_id}/")
    assert run.info.status == "FAILED"
    assert "cannot write checkpoint" in run.data.tags["latentseg.error"]


class Payload:
    """Unpickling this creates the folder ``sentinel``: code run by merely loading a file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return os.makedirs, (self.sentinel,)


def write_payload(path: Path, form: str, sentinel: Path) -> Path:
    """A checkpoint-looking file whose unpickling runs :class:`Payload`."""
    state = {"format_version": "1", "model": {"weight": torch.zeros(2)}, "rng": Payload(sentinel)}
    if form == "torch zip":
        torch.save(state, path)
    elif form == "torch legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(state, protocol=2))  # torch.load's own protocol
    return path


FORMS = ["torch zip", "torch legacy", "plain pickle"]


@pytest.mark.parametrize("form", FORMS)
def test_the_payload_runs_when_loaded_without_weights_only(form, tmp_path):
    """The payload is real: an unrestricted load does create the sentinel (so the tests
    below, which assert it stays absent, can fail)."""
    sentinel = tmp_path / "sentinel"
    path = write_payload(tmp_path / "last.ckpt", form, sentinel)
    if form == "plain pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert sentinel.exists()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ["last.ckpt", "model.safetensors"])
def test_a_checkpoint_carrying_a_pickle_payload_is_refused_and_never_runs(form, name, tmp_path):
    sentinel = tmp_path / "sentinel"
    path = write_payload(tmp_path / name, form, sentinel)
    if name == "last.ckpt":
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            load_training_state(path)
    for load in (load_model_file, load_model):
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            load(str(path))
    assert not sentinel.exists()


def test_resume_from_a_checkpoint_carrying_a_pickle_payload_exits_2_and_never_runs_it(
    tiny_yaml, tmp_path
):
    sentinel = tmp_path / "sentinel"
    planted = tmp_path / "planted"
    planted.mkdir()
    last = write_payload(planted / "last.ckpt", "torch zip", sentinel)
    config = tiny_yaml({**FAST_EPOCHS, "train": {**FAST_EPOCHS["train"], "epochs": 2}})
    done = subprocess.run(
        train_command(config, "--no-progress", "--resume", str(last)),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(done, "cannot load training state", str(last))
    assert not sentinel.exists()
    assert not (tmp_path / "mlruns" / "checkpoints").exists()  # nothing was trained


def test_resume_of_a_run_whose_checkpoint_carries_a_pickle_payload_refuses_it(
    tiny, tracking_uri, tmp_path
):
    """The checkpoint comes from the run's MLflow artifacts: still refused, never run, and
    the run keeps its status (not reopened as RUNNING)."""
    sentinel = tmp_path / "sentinel"
    client = MlflowClient(tracking_uri)
    config = tiny()
    experiment_id = client.create_experiment(
        "tests", artifact_location=(tmp_path / "store" / "artifacts").as_uri()
    )
    run_id = client.create_run(experiment_id).info.run_id
    planted = tmp_path / "planted"
    planted.mkdir()
    client.log_artifact(
        run_id, str(write_payload(planted / "last.ckpt", "torch zip", sentinel)), "checkpoints"
    )
    client.set_terminated(run_id, "KILLED")
    with pytest.raises(CheckpointError, match="cannot load training state"):
        run_experiment(config, tracking_uri=tracking_uri, resume=run_id, progress=False)
    assert not sentinel.exists()
    assert client.get_run(run_id).info.status == "KILLED"


def test_no_code_path_unpickles_untrusted_data():
    """Every ``torch.load`` in the package passes ``weights_only=True``; nothing passes
    ``weights_only=False``; no pickle-family loader is imported or called."""
    unpicklers = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve"}
    problems, torch_loads = [], 0
    sources = sorted((ROOT / "latentseg").rglob("*.py"))
    for source in sources:
        where = source.relative_to(ROOT)
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [alias.name for alias in node.names]
                )
                if any(m.split(".")[0] in unpicklers for m in modules):
                    problems.append(f"{where}:{node.lineno}: imports {', '.join(modules)}")
                if node_imports_torch_load(node):
                    problems.append(f"{where}:{node.lineno}: from torch import load")
            if not isinstance(node, ast.Call):
                continue
            weights_only = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
            if isinstance(weights_only, ast.Constant) and weights_only.value is False:
                problems.append(f"{where}:{node.lineno}: weights_only=False")
            if ast.unparse(node.func) == "torch.load":
                torch_loads += 1
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    problems.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            if any(k.arg == "allow_pickle" for k in node.keywords):
                problems.append(f"{where}:{node.lineno}: allow_pickle")
    assert not problems, "\n".join(problems)
    assert torch_loads >= 1  # the scan does see the package's own torch.load


def node_imports_torch_load(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("torch")
        and any(alias.name in ("load", "serialization") for alias in node.names)
    )


def test_a_run_whose_process_was_killed_is_resumed_in_place(
    tiny_yaml, tracking_uri, tmp_path, gate
):
    """SIGKILL (the OOM killer, kill -9) leaves the run RUNNING; every run records its owner
    process, so ``--resume RUN_ID`` sees that process is gone and continues the same run, in
    place: one metric history, one value per epoch. A run whose owner is alive is refused."""
    from latentseg.cli import main

    epochs = 4
    # 64 samples in batches of 8: the run holds at the gate before epoch 3's first step
    config = tiny_yaml(
        {
            "data": gate.dataset(steps=[2 * 8], runs=[0]),
            "train": {"epochs": epochs},
            "tracking": {"attention_plots": False},
        }
    )
    process = subprocess.Popen(
        train_command(config, "--no-progress", "--tracking-uri", tracking_uri),
        cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    gate.wait(run_step(0, 2 * 8), process)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    deadline = time.monotonic() + 120  # held, the run can only finish logging its 2 epochs
    while not (
        "checkpoints" in {a.path for a in client.list_artifacts(run.info.run_id)}
        and len(client.get_metric_history(run.info.run_id, "val_miou")) == 2
    ):
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the held run never logged 2 epochs and its checkpoints")
        time.sleep(0.2)
    process.kill()  # SIGKILL: nothing is closed
    process.wait(timeout=30)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    owner = json.loads(run.data.tags["latentseg.owner"])
    assert owner["pid"] == process.pid

    assert main(["train", str(config), "--tracking-uri", tracking_uri, "--resume", run.info.run_id, "--no-progress"]) == 0  # fmt: skip
    after = client.get_run(run.info.run_id)
    assert after.info.status == "FINISHED"
    assert f"process {process.pid} on " in after.data.tags["latentseg.taken_over"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")]
    assert sorted(steps) == sorted(set(steps)) and len(steps) == epochs  # each epoch once
    assert len(client.search_runs([run.info.experiment_id])) == 1  # in place, no second run
    assert not (tmp_path / "store" / "checkpoints" / run.info.run_id).exists()  # all uploaded

    # a RUNNING run whose owner is alive (this test's own process) is refused
    live = client.create_run(run.info.experiment_id, tags={"latentseg.owner": json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "start": None})})  # fmt: skip
    with pytest.raises(Exception, match=rf"still RUNNING \(process {os.getpid()} on "):
        run_experiment(config, tracking_uri=tracking_uri, resume=live.info.run_id, progress=False)


def test_a_run_resumed_from_a_checkpoint_file_records_where_it_came_from(
    tiny, tracking_uri, tmp_path
):
    """Resuming from ``last.ckpt`` (not a run id) makes a new run; it names the file and
    the epoch it continues after, so its "best at epoch 1" is not read as its own."""
    first = run_experiment(
        tiny({"train": {"epochs": 1}}), tracking_uri=tracking_uri, progress=False
    )
    fetched = MlflowClient(tracking_uri).download_artifacts(first.run_id, "checkpoints", str(tmp_path))  # fmt: skip
    checkpoint = Path(fetched) / "last.ckpt"  # the local copy is gone once uploaded
    second = run_experiment(
        tiny({"train": {"epochs": 2}}), tracking_uri=tracking_uri, resume=str(checkpoint), progress=False
    )  # fmt: skip
    assert second.run_id != first.run_id
    tag = MlflowClient(tracking_uri).get_run(second.run_id).data.tags["latentseg.resumed_from"]
    assert tag == f"{checkpoint.resolve()} (after epoch 1)"


def test_a_full_disk_under_the_artifacts_is_one_line_and_exit_code_3(tiny_yaml, tmp_path):
    """The store's artifact folder on a 64 KiB tmpfs (a private mount namespace): the first
    checkpoint upload fails with ENOSPC. One line names what could not be written and where
    the local checkpoints are kept (the store's folder); exit code 3 (documented); the run
    ends FAILED, saying why."""
    from tests.conftest import with_private_mounts

    store = tmp_path / "store"
    (store / "artifacts").mkdir(parents=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    config = tiny_yaml({"train": {"epochs": 1}, "tracking": {"attention_plots": False}})
    train = " ".join(train_command(config, "--no-progress", "--tracking-uri", uri))
    done = with_private_mounts(
        f"mount -t tmpfs -o size=64k tmpfs {store / 'artifacts'}", train, tmp_path
    )
    assert done.returncode == 3, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    folder = f"{store}/checkpoints/{run.info.run_id}"
    assert re.fullmatch(
        rf"error: cannot write \S+ to run {run.info.run_id}'s artifacts \(No space left on "
        rf"device\); the checkpoints are kept at {folder}",
        lines[0],
    ), lines[0]
    assert (Path(folder) / "last.ckpt").is_file()
    assert not (tmp_path / "mlruns").exists()
    assert run.info.status == "FAILED" and "No space left" in run.data.tags["latentseg.error"]
