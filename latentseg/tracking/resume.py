"""Resuming: what may change between a run and its resume, and reopening an MLflow run to
continue it (who owns a RUNNING run, which of its checkpoints is newest, fetching them).

Used by :mod:`latentseg.tracking.run`, whose ``--resume`` takes a run id or a ``last.ckpt``."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from latentseg.config import ExperimentConfig
from latentseg.errors import CheckpointError, ConfigError, TrackingError
from latentseg.process import owner_alive, owner_record
from latentseg.train.checkpoint import load_training_state

# Keys whose change keeps a run resumable: they do not change what is computed.
RESUMABLE_CHANGES = (
    "train.epochs",
    "train.early_stopping_patience",
    "train.device",
    "train.threads",
    "tracking.",
)
RESUME_PREFIX = "latentseg-resume-"  # the temporary folders a run's checkpoints are fetched to
CHECKPOINT_NAMES = ("last.ckpt", "best.safetensors")


def check_resumable(old: ExperimentConfig, new: ExperimentConfig, run_id: str) -> None:
    """Refuse (ConfigError) to resume a run trained with ``old`` under ``new`` when they
    differ in anything but :data:`RESUMABLE_CHANGES`, naming up to eight of the keys."""
    before, after = old.flat(), new.flat()
    changed = sorted(
        key
        for key in before.keys() | after.keys()
        if before.get(key) != after.get(key) and not key.startswith(RESUMABLE_CHANGES)
    )
    if changed:
        details = ", ".join(
            f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in changed[:8]
        )
        raise ConfigError(
            f"cannot resume run {run_id}: the config differs in {details}; only train.epochs, train.early_stopping_patience, device, threads and tracking keys may change"
        )


def reopen(client, run_id: str, config: ExperimentConfig, local: Path) -> tuple[Path, str]:
    """Take the run over, fetch its checkpoints (last, and best when there is one) and mark
    it RUNNING. Returns the ``last.ckpt`` to resume from and the run's experiment id.

    The run's local checkpoint folder ``local``, where one was kept (an upload failed), is
    resumed from instead when it is further along than the artifacts."""
    run = _find_run(client, run_id)
    _claim(client, run)
    checkpoint, previous = _fetch_checkpoints(client, run, config, local)
    if config.train.epochs != previous.train.epochs:
        # Params are immutable in MLflow: the change is recorded as a tag. A cosine schedule
        # is stretched to the new length from the current step on.
        client.set_tag(
            run_id,
            "latentseg.resumed_with",
            f"train.epochs: {previous.train.epochs} -> {config.train.epochs}",
        )
    client.update_run(run_id, status="RUNNING")
    return checkpoint, run.info.experiment_id


def _find_run(client, run_id: str):
    """The MLflow run ``run_id``; a TrackingError that says so when there is none (and that
    no checkpoint file has that name either, when it looks like a path)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        looks_like_path = "/" in run_id or run_id.endswith(".ckpt")
        raise TrackingError(
            f"--resume {run_id}: "
            + ("no such checkpoint file, and " if looks_like_path else "")
            + f"no such MLflow run in {client.tracking_uri}"
        ) from None


def _claim(client, run) -> None:
    """Record this process as the run's owner. A RUNNING run is refused while its owner
    lives (or cannot be told); one whose owner died (SIGKILL, the OOM killer) is taken over."""
    run_id = run.info.run_id
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
        client.set_tag(
            run_id,
            "latentseg.taken_over",
            f"process {owner['pid']} on {owner['host']} died with the run RUNNING",
        )
    client.set_tag(run_id, "latentseg.owner", json.dumps(owner_record()))


def _fetch_checkpoints(
    client, run, config: ExperimentConfig, local: Path
) -> tuple[Path, ExperimentConfig]:
    """The newest ``last.ckpt`` (with its ``best.safetensors``) and the config it was trained
    with, refused when ``config`` may not continue it. Artifacts are fetched into a folder of
    their own, removed when the resume is refused, or unused, or once the caller has copied
    the checkpoints into the run's state folder."""
    run_id = run.info.run_id
    folder = Path(tempfile.mkdtemp(prefix=RESUME_PREFIX))
    try:
        checkpoint, saved = _newest_checkpoint(client, run_id, folder, local)
        previous = ExperimentConfig.model_validate_json(saved["experiment_config"])
        check_resumable(previous, config, run_id)
        more_epochs = config.train.epochs > previous.train.epochs
        if run.info.status == "FINISHED" and not more_epochs:
            raise TrackingError(
                f"--resume {run_id}: the run already FINISHED its {previous.train.epochs} epochs; raise train.epochs (--set train.epochs=N) to train it further"
            )
        if saved["state"].get("best_epoch") and checkpoint.parent == folder:
            download(client, run_id, "checkpoints/best.safetensors", folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if checkpoint.parent != folder:
        shutil.rmtree(folder, ignore_errors=True)
    return checkpoint, previous


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
        checkpoint = download(client, run_id, "checkpoints/last.ckpt", folder)
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


def checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoints (:data:`CHECKPOINT_NAMES`) that ``folder`` holds."""
    return [folder / name for name in CHECKPOINT_NAMES if (folder / name).is_file()]


def download(client, run_id: str, artifact: str, folder: Path) -> Path:
    """Fetch the run's ``artifact`` into ``folder``; a CheckpointError when it cannot."""
    from mlflow.exceptions import MlflowException

    try:
        return Path(client.download_artifacts(run_id, artifact, str(folder)))
    except (MlflowException, OSError) as exc:
        raise CheckpointError(f"run {run_id} has no artifact {artifact}: {exc}") from None
