"""Which process owns a trial or a run, and whether it is still alive (this host only)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_record() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}


def owner_alive(owner: dict[str, Any] | None) -> bool:
    """False only when the owner ran on this host and its process is gone."""
    if not owner or owner.get("host") != socket.gethostname():
        return True
    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return owner.get("start") is None or _start_time(pid) == owner.get("start")
