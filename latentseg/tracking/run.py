"""One training run, tracked: create (or reopen) the MLflow run, train, close it with the
right status. No run is left RUNNING by a process that exits normally or on a signal.

Checkpoints are written under the store's local state folder (``<store>/checkpoints/RUN_ID``,
:func:`~latentseg.tracking.store.local_state_dir`) and uploaded to the run's artifacts; that
local copy is removed once the run is closed with every checkpoint uploaded, whatever its
status, and kept while one is not (docs/tracking.md, "Checkpoints")."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latentseg.config import (
    ExperimentConfig,
    Provenance,
    apply_overrides,
    load_experiment_sourced,
    parse_override,
)
from latentseg.errors import CheckpointError, ConfigError, TrackingError
from latentseg.process import owner_alive, owner_record
from latentseg.tracking.datasets import dataset_inputs, log_dataset_inputs
from latentseg.tracking.store import (
    connect,
    get_or_create_experiment,
    local_state_dir,
    resolve_tracking_uri,
)
from latentseg.tracking.tracker import MLflowTracker
from latentseg.train import (
    ConsoleProgress,
    TrainCallback,
    TrainingInterrupted,
    TrainingPruned,
    fit,
    prepare,
)
from latentseg.train.checkpoint import load_model_file, load_training_state
from latentseg.train.interrupt import StopSignal, ignore_interrupts
from latentseg.train.loop import resolve_device

# Keys whose change keeps a run resumable: they do not change what is computed.
RESUMABLE_CHANGES = (
    "train.epochs",
    "train.early_stopping_patience",
    "train.device",
    "train.threads",
    "tracking.",
)


@dataclass
class RunResult:
    run_id: str | None  # None when tracking is off
    status: str  # FINISHED, FAILED or KILLED
    summary: dict[str, float]
    # where training wrote the checkpoints; for a tracked run, removed once the run's
    # artifacts hold them all (kept when an upload failed or never happened)
    checkpoint_dir: Path
    tracking_uri: str | None = None
    experiment_id: str | None = None
    tracking_s: float = 0.0  # wall time training spent on tracking: opening, hooks, closing


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=3, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_tags(config: ExperimentConfig, source: str) -> dict[str, str]:
    import mlflow

    import latentseg

    tags = {
        "latentseg.variant": config.model.variant,
        "latentseg.dataset": config.data.dataset,
        "latentseg.config_hash": config.config_hash(),
        "latentseg.config_group": config.config_hash(include_seed=False),  # same across seeds
        "latentseg.config_source": source,
        "latentseg.version": latentseg.__version__,
        "latentseg.torch_version": torch.__version__,
        "latentseg.mlflow_version": mlflow.__version__,
        "latentseg.python_version": platform.python_version(),
        "latentseg.device": str(resolve_device(config.train.device)),
        "latentseg.seed": str(config.train.seed),
        # the process training the run: a RUNNING run whose owner is gone can be resumed
        "latentseg.owner": json.dumps(owner_record()),
    }
    commit = git_commit()
    if commit:
        tags["latentseg.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return tags


def _check_resumable(old: ExperimentConfig, new: ExperimentConfig, run_id: str) -> None:
    before, after = old.flat(), new.flat()
    changed = sorted(
        k
        for k in before.keys() | after.keys()
        if before.get(k) != after.get(k) and not k.startswith(RESUMABLE_CHANGES)
    )
    if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed[:8])
        raise ConfigError(
            f"cannot resume run {run_id}: the config differs in {details}; only train.epochs, train.early_stopping_patience, device, threads and tracking keys may change"
        )


def run_experiment(
    config: ExperimentConfig | str | Path,
    overrides: Iterable[str] = (),
    tracking_uri: str | None = None,
    resume: str | None = None,
    callbacks: Sequence[TrainCallback] = (),
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    progress: bool = True,
    source: str | None = None,
) -> RunResult:
    """Train one experiment with MLflow tracking (unless ``tracking.enabled`` is false).

    ``resume`` is a run id (continue that MLflow run from its last checkpoint) or a path
    to a ``last.ckpt``. Raises LatentSegError subclasses for bad input before any run
    exists; :class:`TrainingInterrupted` after closing the run KILLED on Ctrl-C / SIGTERM.
    """
    overrides = list(overrides)
    if isinstance(config, (str, Path)):
        config, origin = load_experiment_sourced(config, overrides)
        source = source or origin.source
        origin = Provenance(source, origin.lines)
    else:
        source = source or "<config>"
        config = apply_overrides(config, overrides)
        origin = Provenance(
            source, {tuple(parse_override(o)[0].split(".")): f"--set {o}" for o in overrides}
        )
    # every input error surfaces here, before MLflow, naming each key and where it was set
    prepared = prepare(config, origin)
    resolved = prepared.config
    all_callbacks = [*callbacks, *([ConsoleProgress()] if progress else [])]

    resume_path = Path(resume) if resume and Path(resume).is_file() else None
    if resume_path is not None:
        _check_resumable(
            ExperimentConfig.model_validate_json(
                load_training_state(resume_path)["experiment_config"]
            ),
            resolved,
            str(resume_path),
        )

    if not resolved.tracking.enabled:
        if resume and resume_path is None:
            raise ConfigError(
                f"--resume {resume!r}: with tracking.enabled false, give the path of a last.ckpt"
            )
        # the state folder of the store the run would use (mlruns/ by default): the only copy
        state = local_state_dir(resolve_tracking_uri(tracking_uri, resolved.tracking.tracking_uri))
        checkpoint_dir = (
            resume_path.parent
            if resume_path
            else state / "checkpoints" / f"local-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        )
        with StopSignal() as stop:
            summary = fit(
                prepared, checkpoint_dir, all_callbacks, resume_from=resume_path, should_stop=stop
            )
        return RunResult(None, "FINISHED", summary, checkpoint_dir)

    uri = resolve_tracking_uri(tracking_uri, resolved.tracking.tracking_uri)
    opening = time.perf_counter()
    client = connect(uri)
    resume_run = resume if resume and resume_path is None else None
    checkpoints_root = local_state_dir(uri) / "checkpoints"
    unstored: list[Path] = []  # checkpoints resumed from that the run's artifacts lack
    # Signals are deferred from here on: a Ctrl-C between opening the run and training still
    # ends with the run closed (KILLED), never left RUNNING.
    with StopSignal() as stop:
        inputs = dataset_inputs(resolved, prepared.dataset)  # a bug here leaves no run behind
        if resume_run:
            run_id, resume_path, experiment_id = _reopen(
                client, resume_run, resolved, checkpoints_root / resume_run
            )
        else:
            experiment_id = get_or_create_experiment(client, resolved.tracking.experiment, uri)
            tags = run_tags(resolved, source) | (extra_tags or {})
            if resume_path is not None:  # a new run continuing a checkpoint file: say which
                epoch = load_training_state(resume_path)["state"].get("epoch")
                tags["latentseg.resumed_from"] = f"{resume_path.resolve()} (after epoch {epoch})"
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            run_name = (
                resolved.tracking.run_name
                or f"{resolved.model.variant}-{resolved.data.dataset}-s{resolved.train.seed}"
            )
            run_id = client.create_run(experiment_id, tags=tags, run_name=run_name).info.run_id
        tracking_s = time.perf_counter() - opening
        status = "FAILED"
        tracker = None
        interrupted: TrainingInterrupted | None = None
        try:  # from here on, every exit closes the run with its status
            # a reopened run keeps the datasets it was created with; one from before they
            # were logged gets them now
            if not resume_run or not client.get_run(run_id).inputs.dataset_inputs:
                log_dataset_inputs(client, run_id, inputs)
            notes = getattr(prepared.dataset, "notes", None)
            if notes:  # e.g. a split size capped at what a real dataset holds
                client.set_tag(run_id, "latentseg.data_notes", "; ".join(notes)[:4900])
                for note in notes:
                    print(f"note: {note}", file=sys.stderr, flush=True)
            checkpoint_dir = checkpoints_root / run_id
            if resume_run and resume_path.parent == checkpoint_dir:  # the copy kept here
                unstored = _checkpoint_files(checkpoint_dir)
            elif resume_path is not None and resume_path.parent != checkpoint_dir:
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                for name in CHECKPOINT_NAMES:
                    if (resume_path.parent / name).exists():
                        shutil.copyfile(resume_path.parent / name, checkpoint_dir / name)
                if resume_run:  # the fetched copies, in their own temporary folder
                    shutil.rmtree(resume_path.parent, ignore_errors=True)
                resume_path = checkpoint_dir / "last.ckpt"
            tracker = MLflowTracker(
                client,
                run_id,
                resumed=bool(resume_run),
                plots=resolved.tracking.attention_plots,
                log_model=resolved.tracking.log_model,
                server=uri if uri.startswith(("http://", "https://")) else None,
            )
            for path in unstored:  # the run's artifacts catch up with what it resumes from
                tracker.upload_checkpoint(path)
            summary = fit(
                prepared,
                checkpoint_dir,
                [tracker, *all_callbacks],
                resume_from=resume_path,
                should_stop=stop,
            )
            status = "FINISHED"
        except TrainingPruned as exc:
            status = "KILLED"
            client.set_tag(run_id, "pruned_at_epoch", str(exc.epoch))
            raise
        except TrainingInterrupted as exc:
            status = "KILLED"
            interrupted = exc
            raise
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException as exc:
            _tag_error(client, run_id, exc)
            raise
        finally:
            closing = time.perf_counter()
            if tracker is not None:
                tracker.close()  # every plot upload done before the run is closed
                tracking_s += tracker.seconds
            _terminate(client, run_id, status)
            if tracker is not None and not tracker.unstored_checkpoints():
                _remove_local_checkpoints(checkpoint_dir)
                if interrupted is not None:  # its checkpoint is in the run's artifacts now
                    interrupted.args = (
                        f"stopped by {interrupted.signal_name}; resume with --resume {run_id}",
                    )
            tracking_s += time.perf_counter() - closing
    return RunResult(run_id, status, summary, checkpoint_dir, uri, experiment_id, tracking_s)


def _reopen(client, run_id: str, config: ExperimentConfig, local: Path) -> tuple[str, Path, str]:
    """Fetch the run's checkpoints (last, and best when there is one) and mark it RUNNING.
    The run's local checkpoint folder ``local``, where one was kept (an upload failed), is
    resumed from instead when it is further along than the artifacts."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        looks_like_path = "/" in run_id or run_id.endswith(".ckpt")
        raise TrackingError(
            f"--resume {run_id}: "
            + ("no such checkpoint file, and " if looks_like_path else "")
            + f"no such MLflow run in {client.tracking_uri}"
        ) from None
    if run.info.status == "RUNNING":
        recorded = run.data.tags.get("latentseg.owner")
        owner = json.loads(recorded) if recorded else None
        if owner is None or owner_alive(owner):
            who = (
                f"process {owner['pid']} on {owner['host']} trains it"
                if owner
                else "it records no owner process, so whether one still trains it cannot be told"
            )
            raise TrackingError(f"--resume {run_id}: the run is still RUNNING ({who})")
        # its process is gone (SIGKILL, the OOM killer): this one takes it over, in place
        client.set_tag(
            run_id,
            "latentseg.taken_over",
            f"process {owner['pid']} on {owner['host']} died with the run RUNNING",
        )
    client.set_tag(run_id, "latentseg.owner", json.dumps(owner_record()))
    # Fetched into a folder of its own, removed when the resume is refused or once the
    # caller has copied the checkpoints into the run's state folder.
    folder = Path(tempfile.mkdtemp(prefix=RESUME_PREFIX))
    try:
        checkpoint, saved = _newest_checkpoint(client, run_id, folder, local)
        previous = ExperimentConfig.model_validate_json(saved["experiment_config"])
        _check_resumable(previous, config, run_id)
        state = saved["state"]
        more_epochs = config.train.epochs > previous.train.epochs
        if run.info.status == "FINISHED" and not more_epochs:
            raise TrackingError(
                f"--resume {run_id}: the run already FINISHED its {previous.train.epochs} epochs; raise train.epochs (--set train.epochs=N) to train it further"
            )
        if state.get("best_epoch") and checkpoint.parent == folder:
            _download(client, run_id, "checkpoints/best.safetensors", folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if checkpoint.parent != folder:
        shutil.rmtree(folder, ignore_errors=True)
    if config.train.epochs != previous.train.epochs:
        # Params are immutable in MLflow: the change is recorded as a tag. A cosine schedule
        # is stretched to the new length from the current step on.
        client.set_tag(
            run_id,
            "latentseg.resumed_with",
            f"train.epochs: {previous.train.epochs} -> {config.train.epochs}",
        )
    client.update_run(run_id, status="RUNNING")
    return run_id, checkpoint, run.info.experiment_id


RESUME_PREFIX = "latentseg-resume-"
CHECKPOINT_NAMES = ("last.ckpt", "best.safetensors")


def _newest_checkpoint(
    client, run_id: str, folder: Path, local: Path
) -> tuple[Path, dict[str, Any]]:
    """The run's ``last.ckpt`` to resume from, and its contents: the one kept in ``local``
    (its upload failed or never happened: a full store, a server that stayed down, a SIGKILL)
    unless the artifact, downloaded into ``folder``, is further along. On a tie the local one
    wins: its ``best.safetensors`` is written before it, the artifact's is uploaded after."""
    kept = _readable_state(local / "last.ckpt")
    if kept and kept["state"].get("best_epoch") and not (local / "best.safetensors").is_file():
        kept = None  # half a pair: the artifacts' pair is whole
    try:
        checkpoint = _download(client, run_id, "checkpoints/last.ckpt", folder)
    except CheckpointError:
        if kept is None:
            raise
        return local / "last.ckpt", kept
    saved = load_training_state(checkpoint)
    if kept is None or _progress(kept) < _progress(saved):
        return checkpoint, saved
    if _progress(kept) > _progress(saved):
        print(
            f"note: resuming from {local / 'last.ckpt'} (after epoch {kept['state']['epoch']}), "
            f"further along than the run's artifacts (epoch {saved['state']['epoch']})",
            file=sys.stderr,
            flush=True,
        )
    return local / "last.ckpt", kept


def _readable_state(path: Path) -> dict[str, Any] | None:
    """The training state in ``path``; None when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        return load_training_state(path)
    except CheckpointError as exc:
        print(f"note: not resuming from {path}: {exc}", file=sys.stderr, flush=True)
        return None


def _progress(saved: dict[str, Any]) -> tuple[int, int]:
    """How far a training state got: its completed epochs, then the steps into the next."""
    return int(saved["state"].get("epoch", 0)), int(saved.get("step_in_epoch") or 0)


def _checkpoint_files(folder: Path) -> list[Path]:
    return [folder / name for name in CHECKPOINT_NAMES if (folder / name).is_file()]


def _remove_local_checkpoints(folder: Path) -> None:
    """Remove a run's local checkpoint folder once its artifacts hold every checkpoint
    (``--resume RUN_ID`` fetches them from there); a folder that cannot be removed is left."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as exc:
        warnings.warn(
            f"could not remove the uploaded checkpoints at {folder}: {exc.strerror or exc}",
            RuntimeWarning,
            stacklevel=2,
        )


def _download(client, run_id: str, artifact: str, folder: Path) -> Path:
    from mlflow.exceptions import MlflowException

    try:
        return Path(client.download_artifacts(run_id, artifact, str(folder)))
    except (MlflowException, OSError) as exc:
        raise CheckpointError(f"run {run_id} has no artifact {artifact}: {exc}") from None


def _tag_error(client, run_id: str, exc: BaseException) -> None:
    message = f"{type(exc).__name__}: {exc}"
    try:
        client.set_tag(run_id, "latentseg.error", message[:4900])
        client.set_tag(
            run_id,
            "mlflow.note.content",
            f"Failed: {message}\n\n```\n{traceback.format_exc()[-3000:]}\n```",
        )
    except Exception:  # the store itself may be the failure; the status update still runs
        pass


def _terminate(client, run_id: str, status: str) -> None:
    try:
        with ignore_interrupts():  # a second Ctrl-C must not leave the run RUNNING
            client.set_terminated(run_id, status)
    except Exception as exc:
        raise TrackingError(f"could not mark run {run_id} {status}: {exc}") from None


def load_model(path_or_run_id: str, tracking_uri: str | None = None, map_location: str = "cpu"):
    """A model from a checkpoint path, or from the best checkpoint of an MLflow run."""
    if Path(path_or_run_id).exists():
        return load_model_file(path_or_run_id, map_location)
    client = connect(resolve_tracking_uri(tracking_uri))
    with tempfile.TemporaryDirectory(prefix="latentseg-model-") as folder:  # gone once loaded
        path = _download(client, path_or_run_id, "checkpoints/best.safetensors", Path(folder))
        return load_model_file(path, map_location)


__all__ = ["RunResult", "load_model", "run_experiment"]
