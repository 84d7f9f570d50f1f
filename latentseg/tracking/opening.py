"""Opening a tracking store: a tracking server's health check, and a SQLite store created
whole (or not at all), migrated under a lock that one process holds at a time, and diagnosed
when a crash left it half made. :class:`~latentseg.tracking.store.TrackingStore` is the
facade over the client this module opens."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from latentseg.errors import TrackingError


def redact(url: str | None) -> str | None:
    """A storage or tracking URL with any password replaced by ``***``."""
    if not url or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, _, host = rest.rpartition("@")
    if ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}@{host}"


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


def client_credentials() -> dict[str, str]:
    """The driver's MLflow credentials (its environment or ``~/.mlflow/credentials``, and a
    token or TLS settings it has), handed to each Ray worker as a task argument: Ray's dashboard shows a task's environment
    (``runtime_env``) in plain text, never its arguments."""
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    pairs = {"MLFLOW_TRACKING_USERNAME": creds.username, "MLFLOW_TRACKING_PASSWORD": creds.password}
    for name in (
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_SERVER_CERT_PATH",
        "MLFLOW_TRACKING_INSECURE_TLS",
    ):
        pairs[name] = os.environ.get(name)  # a token, and how to trust the server's TLS
    return {k: v for k, v in pairs.items() if v}


CREDENTIALS_HINT = (
    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials)"
)


def check_credentials(uri: str, timeout_s: float = 10.0) -> None:
    """Fail at once, with one line, when the tracking server at ``uri`` asks who the client is
    and MLflow's credentials (its environment variables or ``~/.mlflow/credentials``) are
    missing or refused. The request is MLflow's own (its TLS settings hold), without retries."""
    from mlflow.utils.credentials import get_default_host_creds, read_mlflow_creds
    from mlflow.utils.rest_utils import http_request

    where = redact(uri.rstrip("/"))
    try:
        response = http_request(
            get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "GET",
            max_retries=0, timeout=timeout_s, raise_on_status=False, params={"max_results": 1},
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - TLS, refused connections: one line
        raise TrackingError(
            f"MLflow tracking server {where}: {str(exc).splitlines()[0][:300]}"
        ) from None
    if response.status_code == 401:
        user = read_mlflow_creds().username
        if user is None:
            raise TrackingError(
                f"MLflow tracking server {where} asks who you are: set {CREDENTIALS_HINT}"
            )
        raise TrackingError(
            f"MLflow tracking server {where} refused user '{user}': check the password in {CREDENTIALS_HINT}"
        )
    if response.status_code == 403:  # no permission, or a Host header the server refuses
        user = read_mlflow_creds().username
        said = (response.text.strip().splitlines() or ["forbidden"])[0][:200]
        who = f" for user '{user}'" if user else ""
        raise TrackingError(
            f"MLflow tracking server {where} refused the request{who}: HTTP 403 {said}"
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
        check_credentials(uri)
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
