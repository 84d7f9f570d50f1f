"""A study's workers on a Ray cluster (``latentseg study SPEC --ray [ADDRESS]``).

Ray places the workers, gives each the CPUs and GPUs the spec's ``resources`` ask for (it
sets the visible GPUs), and restarts a worker whose process or node died (up to
``WORKER_RESTARTS`` times). Each Ray worker (:mod:`latentseg.study.ray_task`) starts the
same worker process as a local pool (:func:`latentseg.study.worker.worker_process`): trials
come from the Optuna storage's queue, exactly once, and a dead worker's trial is failed and
queued again by the launch's existing recovery. Nothing of the study's state lives in Ray."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from latentseg.errors import ConfigError
from latentseg.study.context import TrialContext
from latentseg.study.ray_task import StopFlag, ray_worker
from latentseg.study.spec import LoadedStudy, redact
from latentseg.study.storage import env_seconds
from latentseg.tracking.opening import client_credentials

INSTALL_HINT = "--ray needs Ray: pip install 'latentseg[ray]'"
# A worker whose process or node died is started again this many times (then its task fails
# and the launch's next pass, up to max_retry, runs what it left).
WORKER_RESTARTS = 3
# After a stop, how long the workers get to close their runs KILLED before they are killed.
CANCEL_GRACE_S = 60.0
# Environment a worker on any node needs as the launch has it (heartbeat timing, waits).
FORWARDED_ENV_PREFIX = "LATENTSEG_"


def import_ray():
    """Ray, or a ConfigError (exit 2) that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


def local_only(url: str | None) -> bool:
    """Whether a storage or tracking URL names something only this machine can read: a
    journal file (the default storage), a SQLite file or a folder."""
    if url is None:
        return True
    return not url.startswith(("postgresql", "mysql", "http://", "https://", "grpc://"))


def check_reachable(nodes: int, storage_url: str | None, tracking_uri: str) -> None:
    """Refuse (exit 2) to send workers to other nodes with a storage or tracking store that
    only this machine can read."""
    if nodes < 2:
        return
    if local_only(storage_url):
        where = redact(storage_url) or "the default journal file"
        raise ConfigError(
            f"--ray: the cluster has {nodes} nodes, but the study's storage ({where}) is a "
            "file only this machine can read: use --storage postgresql://USER@HOST/DB"
        )
    if local_only(tracking_uri):
        raise ConfigError(
            f"--ray: the cluster has {nodes} nodes, but the tracking store ({redact(tracking_uri)}) "
            "is only on this machine: use --tracking-uri http://HOST:PORT (latentseg server)"
        )


def check_fits(alive_nodes: list[dict], cpus: float, gpus: float, local: bool) -> None:
    """A worker no node can hold waits for one to join: refused (exit 2) on a local Ray,
    which no node ever joins; said in a note on a cluster, where an autoscaler may add it."""
    offers = [
        (node.get("Resources", {}).get("CPU", 0), node.get("Resources", {}).get("GPU", 0))
        for node in alive_nodes
    ]
    if any(offered_cpus >= cpus and offered_gpus >= gpus for offered_cpus, offered_gpus in offers):
        return
    largest = max(offers, default=(0, 0))
    message = (
        f"resources: each worker asks for {cpus:g} CPU(s) and {gpus:g} GPU(s), and no node "
        f"has them (the largest offers {largest[0]:g} CPU(s) and {largest[1]:g} GPU(s))"
    )
    if local:
        raise ConfigError(f"--ray: {message}; lower the spec's resources")
    print(
        f"note: {message}; the workers wait until such a node joins (an autoscaler may add one)",
        file=sys.stderr,
        flush=True,
    )


@dataclasses.dataclass
class RayWorkers:
    """A connected Ray cluster that runs a launch's workers: a
    :class:`~latentseg.study.pool.WorkerPool`, as
    :class:`~latentseg.study.local_workers.LocalWorkers` is on this machine."""

    ray: Any
    address: str
    resources: dict[str, float]  # per worker: {"cpus": N, "gpus": M}
    nodes: int
    dashboard: str | None

    @property
    def threads(self) -> int:
        return max(1, int(self.resources["cpus"]))

    def describe(self) -> dict[str, str]:
        """Tags for the study's parent run: the cluster, its resources and the workers'."""
        total = self.ray.cluster_resources()
        cluster = {k: v for k, v in total.items() if not k.startswith("node:")}
        return {
            "latentseg.ray.address": self.address,
            "latentseg.ray.nodes": str(self.nodes),
            "latentseg.ray.cluster_resources": json.dumps(cluster, sort_keys=True),
            "latentseg.ray.worker_resources": json.dumps(self.resources, sort_keys=True),
            **({"latentseg.ray.dashboard": self.dashboard} if self.dashboard else {}),
        }

    def run(
        self, trial_context: TrialContext, storage_url: str | None, deadline: float | None, workers: int,
        stop,
    ) -> None:  # fmt: skip
        """Run ``workers`` Ray workers until each has found the queue empty (or the deadline
        passed); a stop stops them (their trials are queued again, their runs KILLED), and
        kills those still running ``CANCEL_GRACE_S`` later."""
        ray = self.ray
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}
        remote = ray.remote(ray_worker)
        options = {
            "num_cpus": self.resources["cpus"],
            "num_gpus": self.resources["gpus"],
            "max_retries": WORKER_RESTARTS,
            "retry_exceptions": False,
            "scheduling_strategy": "SPREAD",
            **({"runtime_env": {"env_vars": env}} if env else {}),
        }
        trial_context = dataclasses.replace(trial_context, threads=self.threads)
        flag = ray.remote(StopFlag).options(num_cpus=0).remote()
        pending = [
            remote.options(name=f"latentseg-worker-{index}", **options).remote(
                trial_context,
                storage_url,
                deadline,
                index,
                os.getcwd(),
                flag,
                client_credentials(),
            )
            for index in range(workers)
        ]
        cancelled_at: float | None = None
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in done:
                    self._report(ref)
                if stop() and cancelled_at is None:
                    cancelled_at = time.monotonic()
                    flag.set.remote("stopped by the launch")
                elif cancelled_at and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    cancelled_at = float("inf")
        finally:
            for ref in pending:  # the driver itself is going (an error, a second Ctrl-C)
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

    def _report(self, ref) -> None:
        """A worker that ended with an error says so; the launch repairs what it left."""
        try:
            self.ray.get(ref)
        except self.ray.exceptions.TaskCancelledError:
            pass
        except self.ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            print(f"ray worker ended: {first}", file=sys.stderr, flush=True)


ADDRESS_FORMS = "auto, HOST:PORT or ray://HOST:10001 (or no ADDRESS: a local Ray)"
# How long a cluster's address gets to answer before the launch says nothing is there (Ray
# itself retries an unreachable address for minutes).
CONNECT_TIMEOUT_S = 5.0
# How long joining a cluster at an address may take.
JOIN_TIMEOUT_S = 120


def host_and_port(address: str) -> tuple[str, int] | None:
    """The host and port a ``--ray`` address names (``None`` for ``local`` and ``auto``), or a
    ConfigError naming the forms it takes."""
    if address in ("local", "auto"):
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or "/" in host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--ray {address}: expected {ADDRESS_FORMS}")
    return host.removeprefix("[").removesuffix("]"), int(port)  # [::1]:6379 for IPv6


def _init(ray, address: str):
    return ray.init(
        address=None if address == "local" else address,
        logging_level="ERROR",
        log_to_driver=True,
        configure_logging=True,
    )


def _init_within(ray, address: str, timeout_s: float):
    """``ray.init`` on a thread of its own, given ``timeout_s``: at an address that answers
    but is not a Ray cluster (a dashboard's port, a database), Ray waits for minutes."""
    outcome: dict[str, Any] = {}

    def init() -> None:
        try:
            outcome["context"] = _init(ray, address)
        except BaseException as exc:  # handed to the launch's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=init, name="ray-init", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no Ray cluster answered there within {timeout_s:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["context"]


def token_refused(ray, exc: BaseException) -> bool:
    """Whether joining failed on Ray's token authentication: the cluster refused this
    process's token, or this process has none to send. Ray says so only in the cause of the
    ConnectionError it raises (an ``AuthenticationError``, or a RuntimeError quoting one)."""
    refused = getattr(getattr(ray, "exceptions", None), "AuthenticationError", ())
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (refused and isinstance(exc, refused)) or any(
            sign in str(exc) for sign in ("AuthenticationError", "InvalidAuthToken")
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def token_hint(address: str, target: tuple[str, int] | None) -> str:
    """What to do when the cluster at ``address`` refuses this launch's token. Ray sends a
    token to a cluster at an address only with ``RAY_AUTH_MODE=token``; it reads it from
    ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token``."""
    where = f"{target[0]}:{target[1]}" if target else "this machine"
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        problem = "refused this launch's authentication token (it is not the head's)"
    else:
        problem = "requires an authentication token, and this launch sends none"
    return (
        f"--ray {address}: the Ray cluster at {where} {problem}. Set RAY_AUTH_MODE=token and "
        "RAY_AUTH_TOKEN to the token the head was started with (its RAY_AUTH_TOKEN, or the "
        "file its RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token holds; `ray get-auth-token` prints "
        "it there), or RAY_AUTH_TOKEN_PATH to a copy of that file"
    )


def connect(ray, address: str):
    """``ray.init`` for ``address``; an address where nothing answers, or a cluster Ray cannot
    join, is a ConfigError (exit 2) before anything of the study starts."""
    target = host_and_port(address)
    if target is not None:
        try:
            socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(
                f"--ray {address}: nothing answers at {target[0]}:{target[1]} ({reason}); "
                "start a cluster there with `ray start --head`, or leave out ADDRESS for a local Ray"
            ) from None
    try:
        if target is None:  # local and auto: on this machine, in the launch's main thread
            return _init(ray, address)
        timeout_s = env_seconds("LATENTSEG_RAY_JOIN_TIMEOUT_S", JOIN_TIMEOUT_S)
        return _init_within(ray, address, timeout_s)
    except Exception as exc:
        if token_refused(ray, exc):
            raise ConfigError(token_hint(address, target)) from None
        if not isinstance(exc, (ConnectionError, ValueError, RuntimeError, TimeoutError)):
            raise
        if address == "auto" and isinstance(exc, ConnectionError):
            raise ConfigError(
                "--ray auto: no Ray cluster runs on this machine; start one with `ray start "
                "--head`, or leave out ADDRESS for a local Ray"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        error = ConfigError(f"--ray {address}: could not join a Ray cluster: {first}")
        # ray.init, given up on, still runs on its thread: the interpreter's shutdown under it
        # can crash in Ray's core (seen as SIGSEGV/SIGABRT on a loaded machine), so the
        # command ends its process at once after saying why (nothing of the study started)
        error.exit_at_once = isinstance(exc, TimeoutError)
        raise error from None


@contextlib.contextmanager
def ray_cluster(
    address: str, loaded: LoadedStudy, storage_url: str | None, tracking_uri: str
) -> Iterator[RayWorkers]:
    """Connect to the Ray cluster at ``address`` (``local``: start one for this launch),
    refuse a multi-node cluster with a store only this machine can read, and print the
    dashboard's address; disconnects (and stops a local one) at the end."""
    ray = import_ray()
    local = address == "local"
    context = connect(ray, address)
    try:
        alive = [node for node in ray.nodes() if node.get("Alive")]
        nodes = len(alive)
        check_reachable(nodes, storage_url, tracking_uri)
        resources = loaded.spec.resources
        check_fits(alive, resources.cpus, resources.gpus, local)
        dashboard = getattr(context, "dashboard_url", None) or None
        if dashboard and not dashboard.startswith("http"):
            dashboard = f"http://{dashboard}"
        where = "a local Ray" if local else f"Ray at {address}"
        print(
            f"{where}: {nodes} node(s)" + (f", dashboard {dashboard}" if dashboard else ""),
            file=sys.stderr,
            flush=True,
        )
        yield RayWorkers(
            ray, address, {"cpus": resources.cpus, "gpus": resources.gpus}, nodes, dashboard
        )
    finally:
        ray.shutdown()
