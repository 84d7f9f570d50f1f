"""The journal file of a study: a write cut short at its end is set aside before Optuna
reads it, and a damaged line inside it is named, with the way out, instead of a
JSONDecodeError."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from latentseg.errors import ConfigError


def repair_journal_tail(path: Path) -> int:
    """A journal whose last line has no newline holds a write cut short (a crash or a full
    disk mid-append): the next append would be glued to it and the whole journal would stop
    reading. Under Optuna's own journal lock (so a write in progress is never mistaken for a
    cut one), move that partial line to ``<journal>.damaged`` and drop it; it was never a
    complete operation, so nothing that ran is lost. Returns the bytes moved."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    if os.path.lexists(f"{path}.lock"):
        return 0  # a writer holds the journal (or a dead one left its lock): never wait here
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with open(path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 1))
            if handle.read(1) == b"\n":
                return 0
            handle.seek(0)
            data = handle.read()
            keep = data.rfind(b"\n") + 1
            with open(f"{path}.damaged", "ab") as aside:
                aside.write(data[keep:] + b"\n")
            handle.truncate(keep)
    finally:
        lock.release()
    print(
        f"note: {path}: its last line was a write cut short ({len(data) - keep} bytes, a crash "
        f"or a full disk); moved to {path}.damaged and dropped (it never completed)",
        file=sys.stderr,
        flush=True,
    )
    return len(data) - keep


class _CheckedJournal(JournalFileBackend):
    """Optuna's journal file, with a damaged line (a write cut short by a crash or a full
    disk, with later lines after it) reported as a one-line ConfigError naming the file and
    the line instead of a JSONDecodeError."""

    def read_logs(self, log_number_from: int):
        number = log_number_from
        try:
            for log in super().read_logs(log_number_from):
                number += 1
                yield log
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            line = number + 1
            raise ConfigError(
                f"{self._file_path}: line {line} is damaged ({exc}; a write cut short by a "
                "crash or a full disk) and Optuna cannot read past it, so no study in this "
                f"journal can run. Keep a copy (cp {self._file_path} {self._file_path}.bak), "
                f"remove that line (sed -i '{line}d' {self._file_path}) and launch again: "
                "the operation it held is lost, and a trial it left running is failed "
                "and retried"
            ) from None
