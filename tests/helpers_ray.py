"""The Ray test rig: a cluster of real Ray nodes on loopback addresses of this machine (a head
and a second node, one CPU each), with token authentication that leaves ``~/.ray`` alone.
``tests/study/test_ray.py`` runs its studies on it, and ``benchmarks/ray_scaleout.py
--faults`` times faults on it."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import subprocess_env
from tests.helpers_processes import free_port

RAY = Path(sys.executable).with_name("ray")

# One token for the tests' clusters and drivers (Ray's token authentication, without touching
# ~/.ray). The nodes take loopback addresses other than 127.0.0.1, which Ray would replace by
# the machine's own address: every connection stays on loopback.
RAY_TOKEN = secrets.token_hex(16)
HEAD_IP, SECOND_IP = "127.0.0.3", "127.0.0.2"


# The head declares a node that stopped answering dead after about 3 s of missed health
# checks instead of Ray's 15-25 s (checks every 3 s, 5 misses, 10 s timeout): what a study does
# when a node dies is the same, and the test that stops a node waits 18 s less.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "3",
}


def ray_env() -> dict[str, str]:
    env = subprocess_env()
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=RAY_TOKEN)
    return env


class Node:
    """One Ray node (``ray start --block``) in its own session and temporary folder, on a
    loopback address, with one CPU; stopped by killing its processes."""

    def __init__(self, head_port: int, head: bool) -> None:
        # a short folder: Ray's socket paths must fit in 107 characters
        self.temp_dir = tempfile.mkdtemp(prefix="lsray-")
        command = [
            str(RAY), "start", "--block", "--node-ip-address", HEAD_IP if head else SECOND_IP,
            "--temp-dir", self.temp_dir, "--num-cpus", "1", "--object-store-memory", "80000000",
            "--disable-usage-stats", "--node-manager-port", str(free_port()),
            "--object-manager-port", str(free_port()), "--metrics-export-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
        ]  # fmt: skip
        if head:
            command += [
                "--head", "--port", str(head_port), "--include-dashboard", "false",
                "--dashboard-port", str(free_port()),
                "--ray-client-server-port", str(free_port()),
            ]  # fmt: skip
        else:
            command += ["--address", f"{HEAD_IP}:{head_port}"]
        self.process = subprocess.Popen(
            command, env={**ray_env(), **FAST_HEALTH_CHECKS}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def pids(self) -> list[int]:
        """Every process of this node: its process group and their descendants (the raylet
        starts each worker in a session of its own)."""
        parents: dict[int, int] = {}
        found: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, parent, group = int(entry.name), int(fields[1]), int(fields[2])
            parents[pid] = parent
            if group == self.process.pid:
                found.add(pid)
        grown = True
        while grown:
            children = {pid for pid, parent in parents.items() if parent in found} - found
            found |= children
            grown = bool(children)
        return sorted(found)

    def stop(self) -> None:
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        self.process.wait(timeout=30)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def wait_listening(port: int, process: subprocess.Popen, deadline: float) -> None:
    """Wait until the head's port accepts connections (a socket probe: no process, no job on
    the cluster); fails the test when the head ``process`` exits or ``deadline`` passes."""
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the Ray head exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HEAD_IP, port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the Ray head did not listen on {HEAD_IP}:{port}")
        time.sleep(0.2)


def wait_for_nodes(port: int, count: int, timeout_s: float = 90) -> None:
    """Wait until the cluster at ``port`` (its head listening) has ``count`` live nodes: one
    driver process that joins (again, while the head's services come up) and polls
    ``ray.nodes()`` until the count is reached. A driver per poll would cost a second of CPU
    each, and a job on the cluster. Fails the test when the time runs out."""
    deadline = time.monotonic() + timeout_s
    code = (
        "import time, ray\n"
        f"deadline = time.monotonic() + {max(1.0, deadline - time.monotonic()):.1f}\n"
        "while True:\n"
        "    try:\n"
        f"        ray.init(address='{HEAD_IP}:{port}', logging_level='ERROR', log_to_driver=False)\n"
        "        break\n"
        "    except Exception:\n"
        "        if time.monotonic() > deadline:\n"
        "            raise\n"
        "        ray.shutdown()\n"
        "        time.sleep(0.5)\n"
        f"while sum(n['Alive'] for n in ray.nodes()) < {count} and time.monotonic() < deadline:\n"
        "    time.sleep(0.25)\n"
        "print(sum(n['Alive'] for n in ray.nodes()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=ray_env(), capture_output=True, text=True,
        timeout=timeout_s + 60,
    )  # fmt: skip
    seen = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
    assert seen == [str(count)], f"{count} Ray node(s) expected, seen {seen}: {done.stderr[-2000:]}"


def start_cluster(port: int) -> tuple[Node, Node]:
    """A head and a second node on ``port``, both alive; both stopped (their folders removed)
    if they do not come up. The second node starts as soon as the head listens: it waits
    for the head's services itself."""
    head = Node(port, head=True)
    second = None
    try:
        wait_listening(port, head.process, time.monotonic() + 90)
        second = Node(port, head=False)
        wait_for_nodes(port, 2)
    except BaseException:
        if second is not None:
            second.cleanup()
        head.cleanup()
        raise
    return head, second
