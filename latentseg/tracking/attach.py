"""One run, named by its store and id: read its params, attach files to it. For the command
line, which names runs but does not talk to MLflow itself."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from latentseg.errors import StoreWriteError
from latentseg.tracking.store import connect


def run_params(tracking_uri: str, run_id: str) -> dict[str, str]:
    """The params logged on run ``run_id`` of the existing store ``tracking_uri``."""
    return dict(connect(tracking_uri, create=False).get_run(run_id).data.params)


def attach_files(
    tracking_uri: str, run_id: str, paths: Iterable[str | Path], artifact_path: str
) -> None:
    """Log each of ``paths`` as an artifact of run ``run_id`` under ``artifact_path``. A store
    that opens but cannot be written (read-only, full) raises :class:`StoreWriteError` with
    the reason; one that cannot be opened raises as :func:`connect` does."""
    from mlflow.exceptions import MlflowException

    client = connect(tracking_uri, create=False)
    try:
        for path in paths:
            client.log_artifact(run_id, str(path), artifact_path)
    except (OSError, MlflowException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise StoreWriteError(f"the store {tracking_uri} cannot be written ({reason})") from None
