"""Which process owns a trial or a run (latentseg.process): a recorded owner is dead only when
it ran on this host and its process is gone, or its pid now belongs to a later process."""

from __future__ import annotations

import subprocess
import sys

from latentseg.process import owner_alive, owner_record


def test_this_process_is_alive_and_a_finished_one_is_not():
    me = owner_record()
    assert owner_alive(me)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = {**me, "pid": child.pid, "start": None}
    assert not owner_alive(gone)


def test_a_reused_pid_or_another_host_is_not_taken_for_dead_wrongly():
    me = owner_record()
    assert not owner_alive({**me, "start": "1"})  # our pid, but started at another time
    assert owner_alive({**me, "host": "elsewhere", "pid": 2**22 + 1})  # cannot tell: alive
    assert owner_alive(None) and owner_alive({})  # nothing recorded: never reaped


def test_a_killed_orphan_left_unreaped_is_dead():
    """A launch killed with its process group leaves its worker an orphan; where the
    container's first process never reaps (Docker without --init, this sandbox), the worker
    stays a zombie, and its trials must still be taken for dead."""
    import os
    import signal
    import time

    launch = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
         "print(worker.pid, flush=True)\n"
         "time.sleep(120)\n"],
        stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    worker = int(launch.stdout.readline())
    record = {**owner_record(), "pid": worker, "start": None}
    assert owner_alive(record)
    os.killpg(launch.pid, signal.SIGKILL)
    launch.wait()
    deadline = time.time() + 10
    while owner_alive(record) and time.time() < deadline:
        time.sleep(0.05)
    assert not owner_alive(record)
