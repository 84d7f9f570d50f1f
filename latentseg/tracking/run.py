"""One training run, tracked. :func:`run_experiment` reads as its steps: load the config,
prepare the data and model, then train inside :func:`tracked_run`, the context manager that
creates (or reopens) the MLflow run and closes it with the right status on every exit. No
run is left RUNNING by a process that exits normally or on a signal.

Checkpoints are written under the store's local state folder (``<store>/checkpoints/RUN_ID``,
:func:`~latentseg.tracking.store.local_state_dir`) and uploaded to the run's artifacts; that
local copy is removed once the run is closed with every checkpoint uploaded, whatever its
status, and kept while one is not (docs/tracking.md, "Checkpoints")."""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentseg.config import ExperimentConfig, parse_override
from latentseg.errors import ConfigError, TrackingError
from latentseg.loading import Provenance, apply_overrides, load_experiment_sourced
from latentseg.process import owner_record
from latentseg.tracking.datasets import dataset_inputs, log_dataset_inputs
from latentseg.tracking.logged import SCORES_DIR, TEST_SCORES_FILE
from latentseg.tracking.resume import (
    CHECKPOINT_NAMES,
    check_resumable,
    checkpoint_files,
    download,
    reopen,
)
from latentseg.tracking.store import TrackingStore, local_state_dir, resolve_tracking_uri
from latentseg.tracking.tracker import MLflowTracker
from latentseg.train import (
    ConsoleProgress,
    Prepared,
    TrainCallback,
    TrainingInterrupted,
    TrainingPruned,
    fit,
    prepare,
)
from latentseg.train.checkpoint import load_model_file, load_training_state
from latentseg.train.interrupt import StopSignal, ignore_interrupts
from latentseg.train.resolve import resolve_device


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


@dataclass(frozen=True)
class RunRequest:
    """Which MLflow run to train into: ``resume_run_id``'s, or a new one."""

    source: str  # the config's name, tagged on a new run
    resume_run_id: str | None = None  # reopen this run and resume it from its checkpoints
    resume_path: Path | None = None  # a new run continuing this last.ckpt (tagged with it)
    parent_run_id: str | None = None  # a new run nested under this one (a study's)
    extra_tags: dict[str, str] = field(default_factory=dict)  # for a new run


@dataclass
class TrackedRun:
    """An open MLflow run, as :func:`tracked_run` hands it to training."""

    client: Any  # an MlflowClient for ``uri``
    uri: str
    run_id: str
    experiment_id: str
    resumed: bool  # reopened (--resume RUN_ID), not created
    resume_path: Path | None  # the last.ckpt training continues from
    should_stop: StopSignal  # turns true on Ctrl-C / SIGTERM
    checkpoint_dir: Path  # where training writes checkpoints: <store>/checkpoints/RUN_ID
    tracker: MLflowTracker | None = None
    status: str = "FAILED"  # what the run is closed with, unless training ends otherwise
    tracking_s: float = 0.0  # wall time spent on tracking: opening, hooks, closing

    def result(self, summary: dict[str, float]) -> RunResult:
        return RunResult(
            self.run_id,
            self.status,
            summary,
            self.checkpoint_dir,
            self.uri,
            self.experiment_id,
            self.tracking_s,
        )


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

    from latentseg._version import __version__

    tags = {
        "latentseg.variant": config.model.variant,
        "latentseg.dataset": config.data.dataset,
        "latentseg.config_hash": config.config_hash(),
        "latentseg.config_group": config.config_hash(include_seed=False),  # same across seeds
        "latentseg.config_source": source,
        "latentseg.version": __version__,
        "latentseg.torch_version": torch.__version__,
        "latentseg.mlflow_version": mlflow.__version__,
        "latentseg.python_version": platform.python_version(),
        "latentseg.device": str(resolve_device(config.train.device)),
        "latentseg.seed": str(config.train.seed),
        # where its test images' scores are (the report reads them for runs that say so)
        "latentseg.test_scores": f"{SCORES_DIR}/{TEST_SCORES_FILE}",
        # the process training the run: a RUNNING run whose owner is gone can be resumed
        "latentseg.owner": json.dumps(owner_record()),
    }
    commit = git_commit()
    if commit:
        tags["latentseg.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if str(resolve_device(config.train.device)) == "cpu":
        tags.update(numerics_tags())
    return tags


def numerics_tags() -> dict[str, str]:
    """How this process computes on the CPU: torch's CPU capability, the native first
    stage's status and the weight-gradient path. Runs computed differently round their
    floats differently; the report warns when a comparison pairs such runs."""
    from latentseg.models import encoder

    capability = encoder._cpu_capability()
    if encoder.GEMM_WEIGHT_GRAD is not None:
        gradient = "gemm" if encoder.GEMM_WEIGHT_GRAD else "onednn"
    else:
        gradient = (
            f"gemm from {encoder.GEMM_MIN_POSITIONS} pixels" if capability == "AVX2" else "onednn"
        )
    native = encoder.native_first_stage_status()
    return {
        "latentseg.cpu_capability": capability,
        # "on", or "off" with the reason cut (the reason names paths and compilers)
        "latentseg.native_kernel": native.split(" ", 1)[0],
        "latentseg.weight_gradient": gradient,
    }


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
    config, origin = _load_config(config, list(overrides), source)
    # every input error surfaces here, before MLflow, naming each key and where it was set
    prepared = prepare(config, origin)
    callbacks = [*callbacks, *([ConsoleProgress()] if progress else [])]
    resume_path = _resume_file(resume, prepared.config)
    if not prepared.config.tracking.enabled:
        return _train_untracked(prepared, callbacks, resume, resume_path, tracking_uri)
    request = RunRequest(
        source=origin.source,
        resume_run_id=resume if resume and resume_path is None else None,
        resume_path=resume_path,
        parent_run_id=parent_run_id,
        extra_tags=extra_tags or {},
    )
    uri = resolve_tracking_uri(tracking_uri, prepared.config.tracking.tracking_uri)
    with tracked_run(uri, prepared, request) as run:
        summary = fit(
            prepared,
            run.checkpoint_dir,
            [run.tracker, *callbacks],
            resume_from=run.resume_path,
            should_stop=run.should_stop,
        )
    return run.result(summary)


def _load_config(
    config: ExperimentConfig | str | Path, overrides: list[str], source: str | None
) -> tuple[ExperimentConfig, Provenance]:
    """The config with ``overrides`` applied, and where each key came from (the file's lines,
    ``--set`` flags), under the name ``source`` (by default the file's, or ``<config>``)."""
    if isinstance(config, (str, Path)):
        config, origin = load_experiment_sourced(config, overrides)
        return config, Provenance(source or origin.source, origin.lines)
    set_by = {
        tuple(parse_override(override)[0].split(".")): f"--set {override}" for override in overrides
    }
    return apply_overrides(config, overrides), Provenance(source or "<config>", set_by)


def _resume_file(resume: str | None, config: ExperimentConfig) -> Path | None:
    """The ``last.ckpt`` that ``resume`` names (None for a run id, or no resume), refused
    when it was trained with a config that differs from ``config`` in what it computes."""
    if not resume or not Path(resume).is_file():
        return None
    path = Path(resume)
    saved = load_training_state(path)["experiment_config"]
    check_resumable(ExperimentConfig.model_validate_json(saved), config, str(path))
    return path


def _train_untracked(
    prepared: Prepared,
    callbacks: list[TrainCallback],
    resume: str | None,
    resume_path: Path | None,
    tracking_uri: str | None,
) -> RunResult:
    """Train with ``tracking.enabled`` false: no MLflow, checkpoints in the state folder of
    the store the run would use (``mlruns/`` by default), the only copy."""
    config = prepared.config
    if resume and resume_path is None:
        raise ConfigError(
            f"--resume {resume!r}: with tracking.enabled false, give the path of a last.ckpt"
        )
    state = local_state_dir(resolve_tracking_uri(tracking_uri, config.tracking.tracking_uri))
    checkpoint_dir = (
        resume_path.parent
        if resume_path
        else state / "checkpoints" / f"local-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    )
    with StopSignal() as stop:
        summary = fit(
            prepared, checkpoint_dir, callbacks, resume_from=resume_path, should_stop=stop
        )
    return RunResult(None, "FINISHED", summary, checkpoint_dir)


@contextlib.contextmanager
def tracked_run(uri: str, prepared: Prepared, request: RunRequest) -> Iterator[TrackedRun]:
    """One MLflow run's life around the training inside the ``with`` block.

    Entering creates the run (or reopens ``request.resume_run_id``'s, fetching its
    checkpoints), logs its datasets and notes, lays out its checkpoint folder and attaches an
    :class:`MLflowTracker`. Ctrl-C and SIGTERM are deferred from before the run exists: they
    turn ``run.should_stop`` true, so training stops at a checkpoint. Leaving closes the run
    on every exit with the status it earned (:func:`_closed_with_status`)."""
    opening = time.perf_counter()
    store = TrackingStore.open(uri)
    with StopSignal() as stop:
        inputs = dataset_inputs(prepared.config, prepared.dataset)  # a bug here leaves no run
        run = _open_run(store, prepared.config, request, stop)
        run.tracking_s = time.perf_counter() - opening
        with _closed_with_status(run):
            _log_inputs(run, prepared, inputs)
            _attach_tracker(run, prepared.config, _lay_out_checkpoints(run))
            yield run


def _open_run(
    store: TrackingStore, config: ExperimentConfig, request: RunRequest, stop: StopSignal
) -> TrackedRun:
    """Create the run, or reopen the one to resume (marked RUNNING, its checkpoints fetched)."""
    client, uri = store.client, store.uri
    checkpoints_root = local_state_dir(uri) / "checkpoints"
    if request.resume_run_id:
        run_id = request.resume_run_id
        resume_path, experiment_id = reopen(client, run_id, config, checkpoints_root / run_id)
    else:
        experiment_id = store.experiment(config.tracking.experiment)
        tags = _new_run_tags(config, request)
        run_name = (
            config.tracking.run_name
            or f"{config.model.variant}-{config.data.dataset}-s{config.train.seed}"
        )
        run_id = client.create_run(experiment_id, tags=tags, run_name=run_name).info.run_id
        resume_path = request.resume_path
    return TrackedRun(
        client,
        uri,
        run_id,
        experiment_id,
        resumed=bool(request.resume_run_id),
        resume_path=resume_path,
        should_stop=stop,
        checkpoint_dir=checkpoints_root / run_id,
    )


def _new_run_tags(config: ExperimentConfig, request: RunRequest) -> dict[str, str]:
    """A new run's tags: :func:`run_tags`, the caller's, the checkpoint file it continues
    and the run it is nested under."""
    tags = run_tags(config, request.source) | request.extra_tags
    if request.resume_path is not None:  # a new run continuing a checkpoint file: say which
        epoch = load_training_state(request.resume_path)["state"].get("epoch")
        tags["latentseg.resumed_from"] = f"{request.resume_path.resolve()} (after epoch {epoch})"
    if request.parent_run_id:
        tags["mlflow.parentRunId"] = request.parent_run_id
    return tags


def _log_inputs(run: TrackedRun, prepared: Prepared, inputs: list) -> None:
    """The run's datasets (a reopened run keeps those it was created with; one from before
    they were logged gets them now) and the dataset's notes, as a tag and on stderr."""
    client = run.client
    if not run.resumed or not client.get_run(run.run_id).inputs.dataset_inputs:
        log_dataset_inputs(client, run.run_id, inputs)
    notes = getattr(prepared.dataset, "notes", None)
    if notes:  # e.g. a split size capped at what a real dataset holds
        client.set_tag(run.run_id, "latentseg.data_notes", "; ".join(notes)[:4900])
        for note in notes:
            print(f"note: {note}", file=sys.stderr, flush=True)


def _lay_out_checkpoints(run: TrackedRun) -> list[Path]:
    """Put the checkpoints training resumes from into the run's local folder. Returns those
    of them that the run's artifacts may lack: the copy kept here when an upload failed."""
    folder, resume_path = run.checkpoint_dir, run.resume_path
    if run.resumed and resume_path.parent == folder:  # the copy kept here
        return checkpoint_files(folder)
    if resume_path is not None and resume_path.parent != folder:
        folder.mkdir(parents=True, exist_ok=True)
        for name in CHECKPOINT_NAMES:
            if (resume_path.parent / name).exists():
                shutil.copyfile(resume_path.parent / name, folder / name)
        if run.resumed:  # the fetched copies, in their own temporary folder
            shutil.rmtree(resume_path.parent, ignore_errors=True)
        run.resume_path = folder / "last.ckpt"
    return []


def _attach_tracker(run: TrackedRun, config: ExperimentConfig, unstored: list[Path]) -> None:
    """The callback that logs training to the run; the run's artifacts catch up with the
    checkpoints ``unstored`` first."""
    run.tracker = MLflowTracker(
        run.client,
        run.run_id,
        resumed=run.resumed,
        plots=config.tracking.attention_plots,
        log_model=config.tracking.log_model,
        server=run.uri if run.uri.startswith(("http://", "https://")) else None,
    )
    for path in unstored:
        run.tracker.upload_checkpoint(path)


@contextlib.contextmanager
def _closed_with_status(run: TrackedRun) -> Iterator[None]:
    """Close ``run`` on every exit from the block with the status it earned: FINISHED;
    KILLED when pruned (tagged with the epoch), stopped by a signal or by Ctrl-C; FAILED
    otherwise, with the error as tags. The tracker's uploads finish first; the local
    checkpoints go once the run's artifacts hold them all (kept when an upload failed)."""
    interrupted: TrainingInterrupted | None = None
    try:
        yield
        run.status = "FINISHED"
    except TrainingPruned as exc:
        run.status = "KILLED"
        run.client.set_tag(run.run_id, "pruned_at_epoch", str(exc.epoch))
        raise
    except TrainingInterrupted as exc:
        run.status = "KILLED"
        interrupted = exc
        raise
    except KeyboardInterrupt:
        run.status = "KILLED"
        raise
    except BaseException as exc:
        _tag_error(run.client, run.run_id, exc)
        raise
    finally:
        _close(run, interrupted)


def _close(run: TrackedRun, interrupted: TrainingInterrupted | None) -> None:
    """Finish the tracker's uploads, mark the run with its status, and remove the local
    checkpoints when the run's artifacts hold them all."""
    closing = time.perf_counter()
    tracker = run.tracker
    if tracker is not None:
        tracker.close()  # every plot upload done before the run is closed
        run.tracking_s += tracker.seconds
    _terminate(run.client, run.run_id, run.status)
    if tracker is not None and not tracker.unstored_checkpoints():
        _remove_local_checkpoints(run.checkpoint_dir)
        if interrupted is not None:  # its checkpoint is in the run's artifacts now
            interrupted.args = (
                f"stopped by {interrupted.signal_name}; resume with --resume {run.run_id}",
            )
    run.tracking_s += time.perf_counter() - closing


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
    client = TrackingStore.open(resolve_tracking_uri(tracking_uri)).client
    with tempfile.TemporaryDirectory(prefix="latentseg-model-") as folder:  # gone once loaded
        path = download(client, path_or_run_id, "checkpoints/best.safetensors", Path(folder))
        return load_model_file(path, map_location)


__all__ = ["RunResult", "load_model", "run_experiment"]
