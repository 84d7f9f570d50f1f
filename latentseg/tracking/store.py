"""Where runs go: tracking-URI resolution, experiments with local artifacts, and
:class:`TrackingStore`, the one door to MLflow for the study and the report. Opening a store
(creating, migrating, health checks) is :mod:`latentseg.tracking.opening`'s job."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from latentseg.errors import StoreWriteError, TrackingError
from latentseg.tracking.opening import (  # noqa: F401 - callers import these from here too
    _create_sqlite_store,
    _forget_engine,
    _half_made,
    connect,
    health_problem,
    open_client,
    redact,
    require_store,
    server_reachable,
)

if TYPE_CHECKING:  # pandas is loaded when runs are read, not with latentseg
    import pandas as pd

DEFAULT_STATE_DIR = Path("mlruns")
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def resolve_tracking_uri(explicit: str | None = None, configured: str | None = None) -> str:
    """``--tracking-uri`` > the config's ``tracking.tracking_uri`` > ``$MLFLOW_TRACKING_URI`` >
    the embedded default ``sqlite:///mlruns/mlflow.db``."""
    return explicit or configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def quote(value: str) -> str:
    """``value`` as a string literal of MLflow's search filter: single quotes, or double quotes
    when it holds a single quote (``o'brien``); MLflow has no escape, so a value holding both
    kinds cannot be searched for and is refused."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise TrackingError(
        f"{value!r} holds both ' and \": MLflow's search filters cannot match it; rename it"
    )


# MLflow 3 opens an experiment in its GenAI view unless the link asks for model training.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
UI_ADDRESS = "http://127.0.0.1:5000"  # where `latentseg ui` serves by default


def ui_hint(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """How to open an experiment's runs table (or one run) in the MLflow UI's model-training
    view, in the store ``uri``: the server's own address for a tracking server, else the
    ``latentseg ui`` command for that store (``--tracking-uri`` unless it is the default)
    and the page it serves."""
    page = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    page += f"?{MODEL_TRAINING_VIEW}"
    if uri.startswith(("http://", "https://")):
        return f"open it: {redact(uri.rstrip('/'))}/{page}"
    flag = "" if uri == DEFAULT_TRACKING_URI else f" --tracking-uri {uri}"
    return f"open it: latentseg ui{flag}   then {UI_ADDRESS}/{page}"


def artifact_root(uri: str) -> str | None:
    """Artifact location for new experiments: ``artifacts/`` beside a SQLite file; the
    server's own choice for other stores."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db_path = Path(uri.removeprefix("sqlite:///"))  # 'sqlite:////abs' leaves '/abs'
        return (db_path.parent / "artifacts").resolve().as_uri()
    return None


def local_state_dir(uri: str) -> Path:
    """The folder where this machine keeps a run's local state for the store ``uri`` (its
    checkpoints until they are uploaded): the SQLite file's folder, beside its ``artifacts/``;
    ``mlruns/`` of the working directory for a store elsewhere (a tracking server, PostgreSQL)."""
    if uri.startswith("sqlite:///"):
        db = uri.removeprefix("sqlite:///").split("?", 1)[0]  # 'sqlite:////abs' leaves '/abs'
        if db and db != ":memory:":
            return Path(db).parent
    return DEFAULT_STATE_DIR


def get_or_create_experiment(client, name: str, uri: str) -> str:
    """The experiment's id, creating it (safe against a concurrent creator)."""
    from mlflow.exceptions import MlflowException

    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"MLflow experiment '{name}' is deleted; restore it in the UI or choose another tracking.experiment"
                )
            return experiment.experiment_id
        return client.create_experiment(name, artifact_location=artifact_root(uri))
    except MlflowException as exc:
        if (
            "already exists" in str(exc).lower()
            or getattr(exc, "error_code", "") == "RESOURCE_ALREADY_EXISTS"
        ):
            return client.get_experiment_by_name(name).experiment_id
        raise TrackingError(f"cannot use MLflow experiment '{name}' at {uri}: {exc}") from None


# --------------------------------------------------------------------------- the store

RUN_TYPE = "latentseg.run_type"  # study | trial | seed (untagged: a plain training run)
STUDY_TAG = "latentseg.study"
TRIAL_TAG = "latentseg.trial_number"
# A study's trial and seed runs: their point in words (``num_latents=8, num_heads=2``), so that
# the MLflow UI's "Group by" gathers a point's seeds under its name
POINT_TAG = "latentseg.point"
PAGE_SIZE = 10_000  # runs per search request, as mlflow.search_runs pages


def study_filter(
    study: str,
    run_type: str | None = None,
    trial_number: int | None = None,
    status: str | None = None,
) -> str:
    """The MLflow search filter for the runs of ``study`` (values quoted by :func:`quote`):
    of one ``run_type`` (study, trial, seed), one trial, one status (RUNNING, FINISHED)."""
    parts = [f"tags.`{STUDY_TAG}` = {quote(study)}"]
    if trial_number is not None:
        parts.append(f"tags.`{TRIAL_TAG}` = {quote(str(trial_number))}")
    if run_type is not None:
        parts.append(f"tags.`{RUN_TYPE}` = {quote(run_type)}")
    if status is not None:
        parts.append(f"attributes.status = {quote(status)}")
    return " and ".join(parts)


def runs_frame(runs: list) -> pd.DataFrame:
    """MLflow runs as the frame ``mlflow.search_runs`` returns: ``run_id``, ``experiment_id``,
    ``status``, ``artifact_uri``, ``start_time``/``end_time`` (UTC), then ``metrics.*``
    (NaN where a run lacks one), ``params.*`` and ``tags.*`` (None where missing)."""
    import numpy as np
    import pandas as pd

    infos = [run.info for run in runs]
    columns: dict[str, Any] = {
        key: [getattr(info, key) for info in infos]
        for key in ("run_id", "experiment_id", "status", "artifact_uri")
    }
    for key in ("start_time", "end_time"):
        stamps = [getattr(info, key) for info in infos]
        columns[key] = pd.to_datetime(
            pd.array(stamps, dtype="Int64"), unit="ms", utc=True
        ) if runs else []  # fmt: skip
    for prefix, missing in (("metrics", np.nan), ("params", None), ("tags", None)):
        values: dict[str, list] = {}
        for index, run in enumerate(runs):
            for key, value in getattr(run.data, prefix).items():
                column = values.get(key)
                if column is None:
                    column = values[key] = [missing] * len(runs)
                column[index] = value
        columns.update({f"{prefix}.{key}": column for key, column in values.items()})
    return pd.DataFrame(columns)


class TrackingStore:
    """One MLflow tracking store, reached through an explicit ``MlflowClient`` (never the
    global tracking URI): experiments, a study's runs (its parent, trials and seeds), runs as
    a pandas frame, metric histories, artifacts, and the writes a study makes. The only door
    to MLflow for the study and the report."""

    def __init__(self, client, uri: str | None = None) -> None:
        self.client = client
        self.uri: str = uri or client.tracking_uri

    @classmethod
    def open(cls, uri: str, create: bool = True) -> TrackingStore:
        """The store at ``uri``, created or migrated as :func:`connect` does; ``create=False``:
        a missing SQLite store is an error."""
        return cls(open_client(uri, create), uri)

    @classmethod
    def of(cls, client_or_store) -> TrackingStore:
        """``client_or_store`` as a store (an ``MlflowClient`` is wrapped)."""
        if isinstance(client_or_store, TrackingStore):
            return client_or_store
        return cls(client_or_store)

    # ------------------------------------------------------------------ experiments

    def experiment(self, name: str) -> str:
        """The id of the experiment ``name``, created if needed (:func:`get_or_create_experiment`)."""
        return get_or_create_experiment(self.client, name, self.uri)

    def existing_experiment(self, name: str) -> str | None:
        """The id of the experiment ``name``; None when the store has none by that name."""
        experiment = self.client.get_experiment_by_name(name)
        return None if experiment is None else experiment.experiment_id

    def experiment_ids(self) -> list[str]:
        """The ids of every active experiment."""
        return [e.experiment_id for e in self.client.search_experiments()]

    # ------------------------------------------------------------------ finding runs

    def search(
        self,
        experiment_ids: list[str],
        filter_string: str = "",
        order_by: list[str] | None = None,
        max_results: int | None = None,
    ) -> list:
        """The runs matching ``filter_string``, every page of them (at most ``max_results``)."""
        runs: list = []
        token = None
        while max_results is None or len(runs) < max_results:
            wanted = PAGE_SIZE if max_results is None else min(PAGE_SIZE, max_results - len(runs))
            page = self.client.search_runs(
                experiment_ids,
                filter_string,
                max_results=wanted,
                order_by=order_by,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                break
        return runs

    def frame(self, experiment_ids: list[str], filter_string: str = "") -> pd.DataFrame:
        """The matching runs as one frame, as ``mlflow.search_runs`` gives it (:func:`runs_frame`)."""
        return runs_frame(self.search(experiment_ids, filter_string))

    def mlflow_frame(self, experiment_ids: list[str]) -> pd.DataFrame:
        """The runs as ``mlflow.search_runs`` itself builds them on this store: the yardstick
        that :meth:`frame` is measured against (``latentseg bench``'s report section). The
        process-wide tracking URI is used for the call and restored after."""
        import mlflow
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        with _use_tracking_uri(self.uri):
            return mlflow.search_runs(experiment_ids)

    def study_runs(
        self,
        study: str,
        run_type: str | None = None,
        trial_number: int | None = None,
        status: str | None = None,
        experiment_ids: list[str] | None = None,
    ) -> list:
        """The runs of ``study`` (:func:`study_filter`), in ``experiment_ids`` (default: all)."""
        ids = self.experiment_ids() if experiment_ids is None else experiment_ids
        return self.search(ids, study_filter(study, run_type, trial_number, status))

    def parent_run(
        self, study: str, experiment_ids: list[str] | None = None, status: str | None = None
    ):
        """The latest parent run of ``study`` (of that ``status``), or None."""
        ids = self.experiment_ids() if experiment_ids is None else experiment_ids
        runs = self.search(
            ids,
            study_filter(study, "study", status=status),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def trial_runs(self, study: str, experiment_ids: list[str] | None = None) -> list:
        """The trial runs of ``study``."""
        return self.study_runs(study, "trial", experiment_ids=experiment_ids)

    def seed_runs(self, study: str, experiment_ids: list[str]) -> pd.DataFrame:
        """The seed runs of ``study`` as a frame (:meth:`frame`)."""
        return self.frame(experiment_ids, study_filter(study, "seed"))

    def run(self, run_id: str):
        """The run ``run_id``; None when this store has no such run."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            return None

    # ------------------------------------------------------------------ reading

    def metric_histories(self, run_ids: list[str], key: str, threads: int = 8) -> pd.DataFrame:
        """``run_id, step, value`` of ``key`` for each run, fetched concurrently (one request a
        run)."""
        from concurrent.futures import ThreadPoolExecutor

        import pandas as pd

        def fetch(run_id: str) -> list[tuple[str, int, float]]:
            return [(run_id, m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

        with ThreadPoolExecutor(max_workers=threads) as pool:
            rows = [row for rows in pool.map(fetch, run_ids) for row in rows]
        return pd.DataFrame(rows, columns=["run_id", "step", "value"])

    def artifact_paths(self, run_id: str, folder: str | None = None) -> list[str]:
        """The paths of the artifacts directly in the run's ``folder``."""
        return [a.path for a in self.client.list_artifacts(run_id, folder)]

    def download_artifacts(self, run_id: str, paths: list[str], folder) -> list[str]:
        """Local copies of a run's artifacts in ``folder`` (skipping any that are missing)."""
        from mlflow.exceptions import MlflowException

        # a report, not a download UI
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        local = []
        for path in paths:
            try:
                local.append(self.client.download_artifacts(run_id, path, str(folder)))
            except (MlflowException, OSError):
                continue
        return local

    # ------------------------------------------------------------------ writing

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        """A new RUNNING run; returns its id."""
        return self.client.create_run(experiment_id, tags=tags, run_name=run_name).info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """``params`` on the run (lists and dicts as JSON), in batches of MLflow's limit. A
        value longer than MLflow keeps (6,000 characters: a search space of hundreds of
        choices) is logged cut short, saying so, and in full in the run's
        ``params.json`` artifact (MLflow would cut it with a warning and keep no more)."""
        import tempfile

        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        values = {
            k: json.dumps(v) if isinstance(v, (list, dict)) else str(v)
            for k, v in sorted(params.items())
        }
        long = {k: v for k, v in values.items() if len(v) > MAX_PARAM_VAL_LENGTH}
        for key, value in long.items():
            note = f" ... ({len(value)} characters in all: see params.json)"
            values[key] = value[: MAX_PARAM_VAL_LENGTH - len(note)] + note
        items = [Param(k, v) for k, v in values.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])
        if long:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "params.json"
                path.write_text(json.dumps(long, indent=2))
                self.log_artifact(run_id, path)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """``metrics`` on the run at ``step``, in one request."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
        )

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """``tags`` on the run in one request (one per hundred tags, MLflow's batch limit);
        values as strings, as ``MlflowClient.set_tag`` stores them."""
        from mlflow.entities import RunTag
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        items = [RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=items[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def log_artifact(self, run_id: str, path, folder: str | None = None) -> None:
        """The file ``path`` into the run's artifacts (under ``folder``)."""
        self.client.log_artifact(run_id, str(path), folder)

    def attach_files(self, run_id: str, paths, folder: str) -> None:
        """Log each of ``paths`` into the run's artifacts under ``folder``. A store that opens
        but cannot be written (read-only, full) raises :class:`StoreWriteError` with the
        reason."""
        from mlflow.exceptions import MlflowException

        try:
            for path in paths:
                self.log_artifact(run_id, path, folder)
        except (OSError, MlflowException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise StoreWriteError(f"the store {self.uri} cannot be written ({reason})") from None

    def end_run(self, run_id: str, status: str) -> None:
        """Close the run with ``status`` (FINISHED, FAILED, KILLED)."""
        self.client.set_terminated(run_id, status)
