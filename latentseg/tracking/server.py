"""The ``mlflow server`` command lines behind ``latentseg ui`` and ``latentseg server``: which
binary, which flags, which environment. Nothing here starts a process; the command line runs
what these functions return."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

from latentseg.errors import ConfigError, LatentSegError, TrackingError
from latentseg.tracking.store import (
    DEFAULT_STATE_DIR,
    DEFAULT_TRACKING_URI,
    artifact_root,
    health_problem,
    redact,
    require_store,
)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServerLaunch(NamedTuple):
    """An ``mlflow server`` to start: its command line (``command[0]`` is the binary), its
    environment, and warnings about the choices made."""

    command: list[str]
    env: dict[str, str]
    warnings: list[str]
    auth: str | None = None  # where the users are kept, when the server asks who they are

    def option(self, flag: str) -> str:
        """The value given to ``flag`` on the command line, e.g. ``--backend-store-uri``."""
        return self.command[self.command.index(flag) + 1]


def mlflow_bin() -> str:
    """The ``mlflow`` executable of this Python environment (its bin folder first, then PATH)."""
    found = shutil.which(
        "mlflow",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    if found is None:
        raise LatentSegError("the mlflow command is not installed in this environment")
    return found


def lean_environment() -> dict[str, str]:
    """This process's environment without MLflow's background job runner (its GenAI job queue
    starts eight more processes)."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ui_command(tracking_uri: str, host: str, port: int) -> ServerLaunch:
    """A lean UI (one web worker) on the existing store ``tracking_uri``, which must not be a
    tracking server already; artifacts are read where the store keeps them."""
    if tracking_uri.startswith(("http://", "https://")):
        problem = health_problem(tracking_uri, timeout_s=5.0)
        if problem is None:
            raise TrackingError(
                f"{tracking_uri} is already a tracking server: open it in a browser"
            )
        where = redact(tracking_uri)
        said = (
            f"{where} answers, but not as an MLflow tracking server ({problem})"
            if problem.startswith("HTTP ")
            else f"nothing answers at {where} ({problem})"
        )
        raise TrackingError(
            f"{said}: start the tracking server there, or give `latentseg ui` a store "
            "(--tracking-uri sqlite:///PATH/mlflow.db)"
        )
    binary = mlflow_bin()
    require_store(tracking_uri)
    command = [
        binary,
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    root = artifact_root(tracking_uri)
    if root:
        command += ["--default-artifact-root", root]
    return ServerLaunch(command, lean_environment(), [])


def server_command(
    *,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 2,
    allowed_hosts: str | None = None,
    auth: bool | None = None,
    admin_password_file: str | None = None,
) -> ServerLaunch:
    """A team's tracking server that serves artifacts. The backend (default: the project's
    SQLite store) is a database URI; a PostgreSQL password goes to ``PGPASSWORD`` in the
    environment, never on the command line. Local folders (the SQLite file's, the artifacts)
    are created. Bound beyond localhost without ``allowed_hosts``: a warning.

    ``auth`` (None: on whenever the server is bound beyond loopback) serves MLflow's
    basic-auth app (:func:`auth_settings`); ``auth=False`` beyond loopback serves everyone,
    with a warning."""
    backend, password = backend_without_password(backend_store_uri or DEFAULT_TRACKING_URI)
    env = lean_environment() | ({"PGPASSWORD": password} if password else {})
    beyond = host not in LOCAL_HOSTS
    warnings = []
    users = None
    if auth or (auth is None and beyond):
        users, settings = auth_settings(backend, host, admin_password_file)
        env |= settings
    elif beyond:
        warnings.append(
            f"serving {host}:{port} without authentication (--no-auth): anyone who reaches "
            "the port can read, change or delete every run, checkpoint and report"
        )
    if backend.startswith("sqlite:///"):
        Path(backend.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    artifacts = artifact_destination(artifacts_destination)
    command = [
        mlflow_bin(),
        "server",
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        *(["--app-name", "basic-auth"] if users else []),
    ]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    elif host not in LOCAL_HOSTS:
        warnings.append(
            f"listening on {host} without --allowed-hosts: MLflow then accepts requests "
            "addressed to localhost or a private IP address and refuses those addressed by host "
            f"name; name the hosts clients use, e.g. --allowed-hosts {socket.getfqdn()}:{port}"
        )
    return ServerLaunch(command, env, warnings, users)


ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"  # MLflow's own: the first admin's password
ADMIN_USER = "admin"  # unless MLFLOW_AUTH_ADMIN_USERNAME (MLflow's own) names another
AUTH_CACHE_TTL_S = 60


def auth_settings(backend: str, host: str, password_file: str | None) -> tuple[str, dict[str, str]]:
    """Where MLflow's basic-auth app keeps its users (a SQLite file beside a SQLite store; the
    store's own PostgreSQL database, in tables of their own) and the environment that serves
    it: its config file (``MLFLOW_AUTH_CONFIG_PATH``, readable by its owner alone; it holds
    no secret but a MySQL or MSSQL store's password, PostgreSQL's going to ``PGPASSWORD``), the admin's
    password (from ``MLFLOW_AUTH_ADMIN_PASSWORD`` or ``password_file``, a file only its
    owner can read; never the command line) and a CSRF key for the server's web workers.
    Authenticated users may read every experiment; they write where they created an
    experiment or were granted it."""
    import secrets

    password = admin_password(host, password_file)
    admin = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or ADMIN_USER
    if backend.startswith("sqlite:///"):
        folder = Path(backend.removeprefix("sqlite:///")).resolve().parent
        users = f"sqlite:///{folder / 'basic_auth.db'}"
    else:
        folder, users = DEFAULT_STATE_DIR.resolve(), backend
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "basic_auth.ini"
    private_write(
        config,
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {users}\n"
        f"admin_username = {admin}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # MLflow checks a password with PBKDF2 on every request unless it caches the check; a
        # training run makes hundreds of requests. A changed password or a removed user
        # reaches the other web workers within this time.
        f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}\n",
    )
    return f"{redact(users)} (admin '{admin}')", {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        ADMIN_PASSWORD_ENV: password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
        or secrets.token_hex(32),
    }


def private_write(path: Path, text: str) -> None:
    """``text`` into ``path``, readable and writable by its owner alone; a link there is not
    followed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write the server's auth config {path}: {exc.strerror}") from None
    with os.fdopen(descriptor, "w") as handle:
        os.fchmod(descriptor, 0o600)  # an older file keeps its mode otherwise
        handle.write(text)


def admin_password(host: str, password_file: str | None) -> str:
    """The admin's password: the first line of ``password_file`` (owned by this user, unread
    by group and others), else ``MLFLOW_AUTH_ADMIN_PASSWORD``; neither is an error that says
    what to set."""
    if password_file:
        path = Path(password_file)
        try:
            info = path.stat()
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"--admin-password-file {password_file}: {exc.strerror}") from None
        if info.st_uid != os.getuid():
            raise ConfigError(
                f"--admin-password-file {password_file}: owned by another user; use a file of your own (chmod 600)"
            )
        if info.st_mode & 0o077:
            raise ConfigError(
                f"--admin-password-file {password_file}: readable by others (mode "
                f"{info.st_mode & 0o777:o}); chmod 600 it"
            )
        password = text.splitlines()[0] if text else ""  # the first line, exactly
        if not password:
            raise ConfigError(f"--admin-password-file {password_file}: its first line is empty")
        return _long_enough(password, f"--admin-password-file {password_file}")
    password = os.environ.get(ADMIN_PASSWORD_ENV, "")
    if not password:
        asked = (
            f"--host {host}: a server that others can reach"
            if host not in LOCAL_HOSTS
            else "--auth: the server"
        )
        raise ConfigError(
            f"{asked} asks who they are; set "
            f"{ADMIN_PASSWORD_ENV} (or --admin-password-file FILE, chmod 600) for its admin "
            f"user '{ADMIN_USER}', or pass --no-auth to serve everyone"
        )
    return _long_enough(password, ADMIN_PASSWORD_ENV)


MIN_PASSWORD = 12  # MLflow's own rule for a user's password (mlflow.utils.validation)


def _long_enough(password: str, source: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ConfigError(
            f"{source}: the admin's password has {len(password)} characters; MLflow asks for "
            f"at least {MIN_PASSWORD}"
        )
    return password


def backend_without_password(backend: str) -> tuple[str, str | None]:
    """A server's database URI, checked, and the PostgreSQL password taken out of it."""
    if backend.startswith(("http://", "https://")):
        raise ConfigError(
            f"--backend-store-uri {backend}: that is a tracking server; give a database URI "
            "(postgresql://USER@HOST/DB or sqlite:///PATH)"
        )
    if not backend.startswith(("sqlite:///", "postgresql", "mysql", "mssql")):
        raise ConfigError(
            f"--backend-store-uri {backend!r}: expected postgresql://USER[:PASSWORD]@HOST/DB, "
            "mysql://..., or sqlite:///PATH"
        )
    parts = urlsplit(backend)
    if not (backend.startswith("postgresql") and parts.password):
        return backend, None
    credentials, address = parts.netloc.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{address}")), parts.password


def artifact_destination(given: str | None) -> str:
    """Where the server keeps artifacts: a remote URI as given, else a local folder (default
    ``mlruns/artifacts``), made absolute and created."""
    artifacts = given or str((DEFAULT_STATE_DIR / "artifacts").resolve())
    if "://" not in artifacts:
        artifacts = str(Path(artifacts).resolve())
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    return artifacts
