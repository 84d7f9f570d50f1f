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
