"""Where runs go: tracking-URI resolution, the client, experiments with local artifacts."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from latentseg.errors import StoreWriteError, TrackingError

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


def redact(url: str | None) -> str | None:
    """A storage or tracking URL with any password replaced by ``***``."""
    if not url or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, _, host = rest.rpartition("@")
    if ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}@{host}"


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


def health_problem(uri: str, timeout_s: float) -> str | None:
    """Why the tracking server at ``uri`` fails its health check (``HTTP 404 Not Found`` when
    something else answers there); None when it answers."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def server_reachable(uri: str, timeout_s: float = 2.0) -> bool:
    """Whether the tracking server at ``uri`` answers its health check within ``timeout_s``."""
    return health_problem(uri, timeout_s) is None


def _check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (not after minutes of client retries) when a tracking server is down."""
    problem = health_problem(uri, timeout_s)
    if problem is not None:
        raise TrackingError(
            f"MLflow tracking server {uri} is not reachable ({problem}); start it or pass another --tracking-uri"
        )


@contextlib.contextmanager
def _schema_lock(db: Path, required: bool = True):
    """Serialise the first open of a SQLite store across processes: MLflow creates and migrates
    the schema on open, and two processes doing that at once corrupt it (duplicate tables,
    half-applied alembic steps). Study workers and a second launch open the store together.
    Not ``required`` (a command that only reads an existing store): where the lock file
    cannot be created (a read-only store), the store is opened without it."""
    try:
        handle = open(db.with_name(db.name + ".lock"), "a")  # noqa: SIM115 - closed below
    except OSError:
        if required:
            raise
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def require_store(uri: str) -> None:
    """For commands that only read (reports, the UI): a SQLite store that does not exist is an
    error, not a new empty store created as a side effect."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if str(db) != ":memory:" and not db.is_file():
            raise TrackingError(
                f"no tracking store at {db}: train something first "
                "(latentseg train experiments/shapes.yaml) or pass another --tracking-uri"
            )


def connect(uri: str, create: bool = True):
    """An ``MlflowClient`` for the store ``uri``, created or migrated (:func:`open_client`).
    MLflow's process-wide tracking URI is left as it is: code that calls MLflow's global
    functions says where (the model logger points them at its client's store for the call).
    ``create=False``: a missing SQLite store is an error (:func:`require_store`)."""
    return open_client(uri, create)


def open_client(uri: str, create: bool = True):
    """An ``MlflowClient`` for the store ``uri``, opened (created or migrated) under the schema
    lock; MLflow's global tracking URI is not touched. ``create=False``: a missing SQLite store
    is an error (:func:`require_store`)."""
    from mlflow import MlflowClient

    if not create:
        require_store(uri)
    parsed = urlparse(uri)
    lock = contextlib.nullcontext()
    if parsed.scheme == "sqlite" and not uri.startswith("sqlite:///"):
        raise TrackingError(
            f"tracking URI {uri!r}: expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    if parsed.scheme == "sqlite":
        db = uri.removeprefix("sqlite:///")
        if db and db != ":memory:":
            try:
                Path(db).parent.mkdir(parents=True, exist_ok=True)
                lock = _schema_lock(Path(db), required=create)
            except OSError as exc:
                raise TrackingError(
                    f"cannot create the tracking store folder for {uri}: {exc.strerror}"
                ) from None
    elif parsed.scheme in {"http", "https"}:
        _check_reachable(uri)
    elif parsed.scheme in {"", "file"}:
        raise TrackingError(
            f"tracking URI {uri!r}: MLflow 3 no longer accepts a plain file store; use sqlite:///{uri.removeprefix('file://') or 'mlruns'}/mlflow.db"
        )
    # MLflow announces its schema migrations at INFO on every open; keep the console for ours.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    db = Path(uri.removeprefix("sqlite:///")) if parsed.scheme == "sqlite" else None
    if db is not None and str(db) in ("", ":memory:"):
        db = None
    try:
        with lock:
            if create and db is not None and (not db.exists() or db.stat().st_size == 0):
                _create_sqlite_store(db)
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # opens the store: creates or migrates it
        return client
    except TrackingError:
        raise
    except Exception as exc:
        _forget_engine(uri)
        problem = _half_made(db) if db is not None and db.is_file() else None
        if problem:
            raise TrackingError(problem) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"cannot open MLflow tracking store {uri}: {first}") from None


def _forget_engine(uri: str) -> None:
    """Drop MLflow's cached engine for a store that failed to open: its pooled connection
    would keep the broken file open for the life of the process (a store deleted and created
    again would still be read through it)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = SqlAlchemyStore._engine_map.pop(uri, None)
    except Exception:  # noqa: BLE001 - an MLflow without that cache: nothing to drop
        return
    if engine is not None:
        engine.dispose()


def _create_sqlite_store(db: Path) -> None:
    """Create a new SQLite store whole or not at all: MLflow's schema is built in a temporary
    file beside ``db`` and renamed into place, so a full disk or a kill midway leaves no
    half-made store that every later command would refuse."""
    from mlflow.store.db.utils import (
        _initialize_tables,
        _verify_schema,
        create_sqlalchemy_engine_with_retry,
    )

    partial = db.with_name(f".{db.name}.creating-{os.getpid()}")
    partial.unlink(missing_ok=True)
    engine = None
    try:
        engine = create_sqlalchemy_engine_with_retry(f"sqlite:///{partial}")
        _initialize_tables(engine)
        _verify_schema(engine)
        engine.dispose()
        engine = None
        os.replace(partial, db)
    except Exception as exc:
        reason = _reason(exc)
        raise TrackingError(
            f"cannot create the MLflow tracking store {db}: {reason}; nothing was created "
            "(free some space, or pass another --tracking-uri)"
        ) from None
    finally:
        if engine is not None:
            engine.dispose()
        for leftover in (partial, partial.with_name(partial.name + "-journal")):
            leftover.unlink(missing_ok=True)


def _reason(exc: BaseException) -> str:
    """One line for a store error: the database's own message, without SQLAlchemy's dump."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _half_made(db: Path) -> str | None:
    """Why the SQLite store ``db`` cannot open, when its schema was cut off midway (a full disk
    or a kill while MLflow created or upgraded it); None when it looks whole."""
    import sqlite3

    try:
        with contextlib.closing(
            sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        ) as con:
            tables = {
                row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
            version = (
                [row[0] for row in con.execute("SELECT version_num FROM alembic_version")]
                if "alembic_version" in tables
                else []
            )
            runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.Error as exc:
        return f"{db} is not a readable MLflow store ({exc}): move it aside and run again"
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        head = _get_latest_schema_revision()
    except Exception:  # noqa: BLE001 - an MLflow without it: judge by the leftovers alone
        head = version[0] if version else None
    if not leftovers and version and version[0] == head and "runs" in tables:
        return None
    if runs == 0:
        return (
            f"{db} is a half-created MLflow store that holds no runs (its schema was cut off "
            f"at step {version[0] if version else 'none'}, e.g. by a full disk): delete it "
            f"(rm {db}) and run again"
        )
    return (
        f"{db} holds {runs} runs but its schema upgrade was cut off (step "
        f"{version[0] if version else 'none'}, leftover {', '.join(leftovers) or 'none'}): back "
        f"it up, then run `mlflow db upgrade sqlite:///{db}`"
    )


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
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

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
