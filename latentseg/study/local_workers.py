"""A study's workers on this machine (``latentseg study SPEC --workers N``): the launch's own
process for one worker, else N worker processes, the torch threads and the GPUs split between
them.

Worker processes are forked from a server that imported the worker's modules once
(multiprocessing's ``forkserver``, where the platform has it): a worker then starts in
milliseconds instead of the seconds that importing torch and MLflow again takes, each round
of an adaptive study included. Forked from a process with no threads and no CUDA context, a
worker is as clean as a spawned one; it takes the launch's environment as it is when it
starts. The server ends with the launch (:func:`local_pool`), reaped like a spawned worker:
its workers' CPU time counts as the launch's children's, and the next launch (in a notebook,
a test) starts its own with the code and environment of its time."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from latentseg.study.context import TrialContext
from latentseg.study.worker import worker_loop, worker_process

# After a stop, how long the worker processes get before the launch forwards it to them.
FORWARD_STOP_AFTER_S = 1.0


@dataclass(frozen=True)
class LocalWorkers:
    """Worker processes on this machine (``--workers`` without ``--ray``), the torch threads
    split between them: a :class:`~latentseg.study.pool.WorkerPool`, as
    :class:`~latentseg.study.ray_workers.RayWorkers` is on a Ray cluster."""

    workers: int

    @property
    def threads(self) -> int:
        return max(1, usable_cpus() // self.workers)

    def describe(self) -> dict[str, str]:
        return {}  # nothing to add to the parent run: its params name the workers

    def run(
        self, trial_context: TrialContext, storage_url: str | None, deadline: float | None,
        workers: int, stop,
    ) -> None:  # fmt: skip
        if workers == 1:
            worker_loop(trial_context, storage_url, deadline)
            return
        processes = start_processes(trial_context, storage_url, deadline, workers)
        supervise(processes, stop)


@contextlib.contextmanager
def local_pool(workers: int) -> Iterator[LocalWorkers]:
    """:class:`LocalWorkers` for one launch; the server its workers were forked from ends
    with it."""
    try:
        yield LocalWorkers(workers)
    finally:
        stop_worker_server()


def worker_devices(workers: int, gpus: int, visible: str | None = None) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` for each worker: with several GPUs and several workers, one
    GPU per worker (round-robin when there are more workers than GPUs), taken from the ids
    already visible; ``None`` (inherit) otherwise."""
    if workers < 2 or gpus < 2:
        return [None] * workers
    ids = [i.strip() for i in visible.split(",") if i.strip()] if visible else []
    ids = ids[:gpus] or [str(i) for i in range(gpus)]
    return [ids[i % len(ids)] for i in range(workers)]


def start_processes(
    trial_context: TrialContext, storage_url: str | None, deadline: float | None, workers: int
) -> list:
    """Spawn ``workers`` worker processes, each seeing its own GPU where there are several."""
    import torch

    context = worker_context()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = worker_devices(workers, torch.cuda.device_count(), visible)
    processes = []
    for i, device in enumerate(devices):
        environ = dict(os.environ)
        if device is not None:  # a worker sees only its own GPU
            environ["CUDA_VISIBLE_DEVICES"] = device
        process = context.Process(
            target=worker_process,
            args=(trial_context, storage_url, deadline, i, os.getpid()),
            kwargs={"environ": environ},
            name=f"latentseg-worker-{i}",
        )
        process.start()
        processes.append(process)
    return processes


# What a worker imports before it takes a trial (the worker loop, and what its first trial
# imports lazily: the tracking store's database layer, the optimizer's torch._dynamo, the
# plots): the server that forks workers imports them once.
WORKER_MODULES = [
    "latentseg.study.worker",
    "latentseg.train.loop",
    "mlflow.store.tracking.sqlalchemy_store",
    "alembic.command",
    "torch._dynamo",
    "torch.utils.flop_counter",
    "matplotlib.pyplot",
]


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (``taskset``, a container's or a batch
    scheduler's cpuset), not every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def worker_context():
    """The multiprocessing context that starts worker processes: ``forkserver`` with the
    worker's modules preloaded (Linux, macOS), else ``spawn``."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # first, so that its exit handler runs after those of the modules imported after it
    context.set_forkserver_preload(["latentseg.study.forkserver_exit", *WORKER_MODULES])
    return context


def supervise(processes: list, stop) -> None:
    """Wait for the worker processes; forward a stop of the launch to them, and kill those
    still alive a minute after the rest have ended (or the launch has failed)."""
    forwarded, noticed = False, None
    try:
        while any(p.is_alive() for p in processes):
            if stop() and noticed is None:
                noticed = time.monotonic()
            # A signal to the parent alone (SIGTERM from a scheduler): stop the workers too.
            # A Ctrl-C reached them already through the terminal's process group; the SIGTERM
            # a second later then finds them stopping and does not relabel their stop.
            if (
                noticed is not None
                and not forwarded
                and time.monotonic() - noticed > FORWARD_STOP_AFTER_S
            ):
                for process in processes:
                    if process.is_alive():
                        process.terminate()
                forwarded = True
            for process in processes:
                process.join(timeout=0.5)
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()


def stop_worker_server() -> None:
    """End the forkserver of this process, if one runs, and reap it (its workers are reaped
    by it as they end): multiprocessing's own stop, which closes the server's "alive" pipe and
    waits for it. Nothing happens where none was started."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    from multiprocessing import forkserver

    forkserver._forkserver._stop()
