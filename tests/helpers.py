"""Gates: how a test holds a training process at a point it chooses and lets it go, instead of
guessing how long training lasts.

A :class:`Gate` is a folder. A process that reaches a gated point publishes a record there
(``held-NAME.json``: its pid and where it stands) and waits until the test releases that
point (``release-NAME``), opens the whole gate (``open``), or the process is asked to stop
(SIGINT/SIGTERM: the loop then stops as it would). The test waits for the record, with a
deadline that fails it, does what it came to do (kill, signal, stop a server), then releases.

Two gated points:

- :data:`GATED_DATASET` (``data.dataset: tests.helpers:gated_shapes``): ``shapes`` whose
  training batches pass the gate. A run holds before its ``steps``-th training batch (0:
  before its first step, after its MLflow runs exist); which runs hold is set by ``runs``, the
  order in which runs reach their first gated step (counted across processes, in the folder).
  A ``module:callable`` dataset is imported by whatever process trains, study workers spawned
  by ``multiprocessing`` and Ray workers included, so no entry point is registered.
- ``python -m tests.helpers GATE latentseg-args...``: the ``latentseg`` command with each
  checkpoint write (``last.ckpt``, ``best.safetensors``) held between its complete temporary
  file and the ``os.replace`` that publishes it: ``write-0``, ``write-1``, ...

This module is imported by those processes: it imports nothing from the tests.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from latentseg.data import SegmentationDataset, Split
from latentseg.data.synthetic import Shapes
from latentseg.train.interrupt import stop_requested

GATED_DATASET = "tests.helpers:gated_shapes"
# A held process that nobody releases fails its run instead of hanging the test run.
HOLD_LIMIT_S = 600
POLL_S = 0.01


class Gate:
    """A gate folder, used from both sides: :meth:`hold` in the process being held; the rest in
    the test."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ the held process's side

    def arrive(self) -> int:
        """This run's number among the runs that reached the gate (0 for the first)."""
        number = 0
        while True:
            try:
                os.close(os.open(self.folder / f"arrival-{number}", os.O_CREAT | os.O_EXCL))
                return number
            except FileExistsError:
                number += 1

    def hold(self, name: str, **record: Any) -> None:
        """Publish ``held-NAME.json`` (``record`` and this pid) and wait until the test
        releases ``name`` or opens the gate, or a stop signal has arrived."""
        if self.released(name):
            return
        self._publish(f"held-{name}.json", {"pid": os.getpid(), **record})
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not self.released(name) and not stop_requested():
            if time.monotonic() > deadline:
                raise RuntimeError(f"gate {self.folder}: '{name}' not released in {HOLD_LIMIT_S} s")
            time.sleep(POLL_S)

    def released(self, name: str) -> bool:
        return (self.folder / "open").exists() or (self.folder / f"release-{name}").exists()

    def _publish(self, file_name: str, record: dict) -> None:
        """Write ``file_name`` whole or not at all: the test never reads half a record."""
        temporary = self.folder / f".{file_name}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(record))
        os.replace(temporary, self.folder / file_name)

    # ------------------------------------------------------------------------ the test's side

    def dataset(self, steps: Sequence[int] = (0,), runs: Sequence[int] = (0,)) -> dict:
        """The ``data`` section (merged into a config) that trains on :data:`GATED_DATASET`
        through this gate: runs ``runs`` hold before training batch ``steps`` (0-based)."""
        params = {"image_size": 32, "gate": str(self.folder), "steps": list(steps), "runs": list(runs)}  # fmt: skip
        return {"dataset": GATED_DATASET, "params": params}

    def record(self, name: str) -> dict | None:
        """What the process held at ``name`` published, or None while none is held there."""
        try:
            return json.loads((self.folder / f"held-{name}.json").read_text())
        except FileNotFoundError:
            return None

    def wait(
        self, name: str, process: subprocess.Popen | None = None, timeout_s: float = 300
    ) -> dict:
        """Wait until a process holds at ``name``; returns its record. Fails the test (with
        the output of ``process``, which is ended then) when ``process`` exits first or
        nothing is held there within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            record = self.record(name)
            if record is not None:
                return record
            if process is not None and process.poll() is not None:
                raise AssertionError(
                    f"the process ended (exit {process.returncode}) before anything held at "
                    f"gate '{name}':\n{output_of(process)}"
                )
            time.sleep(POLL_S)
        if process is not None:
            end(process)
        self.open()
        raise AssertionError(
            f"nothing held at gate '{name}' within {timeout_s} s:\n"
            + (output_of(process) if process is not None else "")
        )

    def release(self, name: str) -> None:
        (self.folder / f"release-{name}").touch()

    def open(self) -> None:
        """Release every hold, now and later."""
        (self.folder / "open").touch()


def run_step(run: int, step: int) -> str:
    """The gate name at which run ``run`` holds before its training batch ``step``."""
    return f"run-{run}-step-{step}"


def output_of(process: subprocess.Popen) -> str:
    """Whatever an ended process wrote to its piped output ('' where it is not piped)."""
    if process.stdout is None:
        return ""
    with contextlib.suppress(ValueError, subprocess.TimeoutExpired):
        output = process.communicate(timeout=30)[0]
        return output.decode() if isinstance(output, bytes) else output or ""
    return ""


def end(process: subprocess.Popen) -> None:
    """SIGKILL a process and, where it leads its own process group, the group."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()


# ------------------------------------------------------------------------- the gated dataset


class GatedSplit(Split):
    """A split read through a gate: training batches hold at the gated steps of the runs
    chosen; every other read passes straight through."""

    def __init__(self, inner: Split, gate: Gate, steps: Sequence[int], runs: Sequence[int]):
        self.inner, self.gate, self.steps, self.runs = inner, gate, set(steps), set(runs)
        self.batches_read = 0
        self.run: int | None = None  # this run's arrival number, from its first gated step

    def __len__(self) -> int:
        return len(self.inner)

    def get_batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        return self.inner.get_batch(indices)

    def train_batch(self, indices: Sequence[int], seed: int) -> tuple[Tensor, Tensor]:
        step = self.batches_read
        if step in self.steps:
            if self.run is None:
                self.run = self.gate.arrive()
            if self.run in self.runs:
                self.gate.hold(run_step(self.run, step), run=self.run, step=step)
        self.batches_read += 1
        return self.inner.train_batch(indices, seed)


class GatedShapes(SegmentationDataset):
    """``shapes`` behind a gate. A run is one trainer, and a trainer asks for its train split
    once: each request gets a split of its own, so steps count per run even where a process
    keeps the dataset for its next run (latentseg.train.resolve)."""

    def __init__(self, shapes: Shapes, gate: Gate, steps: Sequence[int], runs: Sequence[int]):
        self.shapes, self.gate, self.steps, self.runs = shapes, gate, steps, runs
        self.info = shapes.info

    def split(self, name: str) -> Split:
        inner = self.shapes.split(name)
        return GatedSplit(inner, self.gate, self.steps, self.runs) if name == "train" else inner


def gated_shapes(
    *, split_sizes, seed: int, gate: str, steps: Sequence[int] = (0,),
    runs: Sequence[int] = (0,), **params: Any,
) -> GatedShapes:  # fmt: skip
    """The dataset :data:`GATED_DATASET` names: ``shapes`` with ``params``, trained through the
    gate folder ``gate``."""
    return GatedShapes(Shapes(split_sizes=split_sizes, seed=seed, **params), Gate(gate), steps, runs)  # fmt: skip


# ---------------------------------------------------------------- gated checkpoint writes

CHECKPOINT_FILES = ("last.ckpt", "best.safetensors")


def hold_checkpoint_writes(gate: Gate) -> None:
    """Make every checkpoint write of this process hold at the gate (``write-N``, N counting
    from 0) with its temporary file complete, before ``os.replace`` publishes it."""
    replace = os.replace
    written = itertools.count()

    def gated_replace(source, target, **kwargs):
        if Path(target).name in CHECKPOINT_FILES and Path(source).name.endswith(".tmp"):
            gate.hold(f"write-{next(written)}", target=str(target), temporary=str(source))
        return replace(source, target, **kwargs)

    os.replace = gated_replace


def gated_command(gate: Gate, *latentseg_args: str) -> list[str]:
    """The ``latentseg`` command line ``latentseg_args`` with its checkpoint writes gated."""
    return [sys.executable, "-m", "tests.helpers", str(gate.folder), *latentseg_args]


if __name__ == "__main__":
    from latentseg.cli import main

    hold_checkpoint_writes(Gate(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
