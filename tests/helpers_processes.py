"""Processes the tests start and watch: a free port to serve on, a process's children, and a
real ``latentseg server`` (MLflow tracking server) started, awaited and stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import subprocess_env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid: int) -> list[int]:
    """The pids of the direct children of process ``pid`` (every thread's, from /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in task.joinpath("children").read_text().split()]
    return out


def descendants(pid: int) -> list[int]:
    """The pids of the processes below ``pid``: its children, theirs, and so on (a launch's
    workers are children of the server they are forked from, itself the launch's child)."""
    out, todo = [], [pid]
    while todo:
        try:
            found = children(todo.pop())
        except OSError:  # ended meanwhile
            continue
        out += found
        todo += found
    return out


def start_server(backend: str, artifacts: Path, port: int, cwd: Path) -> subprocess.Popen:
    """``latentseg server`` on ``backend`` serving ``artifacts`` at 127.0.0.1:``port``, one
    worker, in a process group of its own (:func:`stop_server` ends the group)."""
    return subprocess.Popen(
        [
            sys.executable, "-m", "latentseg.cli", "server", "--backend-store-uri", backend,
            "--artifacts-destination", str(artifacts), "--port", str(port), "--workers", "1",
        ],
        cwd=cwd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    """Wait until the server at ``url`` answers ``/health``; fails the test when ``process``
    exits first or the server is not healthy within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.communicate()[0]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("server did not become healthy")


def stop_server(process: subprocess.Popen) -> None:
    """Stop a server and every worker it started (its own process group): SIGTERM, then
    SIGKILL where it has not ended within 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
