"""Which process owns a trial or a run, and whether it is still alive (this host only)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def owner_record() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}


def owner_alive(owner: dict[str, Any] | None) -> bool:
    """False only when the owner ran on this host and its process is gone: exited, replaced
    by another process with its pid, or a zombie (killed, and never reaped: an orphan whose
    container's first process does not reap, as under Docker without ``--init``)."""
    if not owner or owner.get("host") != socket.gethostname():
        return True
    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)  # read once: state and start time
    if fields and fields[0] in ("Z", "X"):  # zombie or dead: it runs nothing any more
        return False
    start = fields[19] if fields and len(fields) > 19 else None
    return owner.get("start") is None or start == owner.get("start")
