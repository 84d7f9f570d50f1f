"""What runs inside a Ray worker (:mod:`latentseg.study.ray_workers`): the task that starts a
worker process and passes the launch's stop on to it, and the actor the launch sets on a
stop. It imports neither torch nor the training loop (nor does the trial context it is given,
:mod:`latentseg.study.context`): only the worker process it starts trains, so a Ray worker
holds one copy of torch instead of two, and starts a couple of seconds sooner."""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from latentseg.study.context import TrialContext

# How often a worker asks the launch whether to stop.
STOP_POLL_S = 1.0
NODE_TAG = "latentseg.ray.node"
NODE_IP_TAG = "latentseg.ray.node_ip"
WORKER_TAG = "latentseg.ray.worker"


class StopFlag:
    """A Ray actor the launch sets on a stop (Ctrl-C, SIGTERM) and its workers poll: Ray's own
    cancel raises in the task's thread once, and is lost when it lands where a run is being
    closed."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        self.reason = reason

    def get(self) -> str | None:
        return self.reason


def ray_worker(
    trial_context: TrialContext, storage_url: str | None, deadline: float | None, worker_index: int,
    driver_cwd: str, flag, credentials: dict[str, str] | None = None,
) -> int:  # fmt: skip
    """One Ray worker: the local worker loop in a process of its own (started here, it sees
    the GPUs Ray gave this task), its runs tagged with its node and index. A stop of the
    launch reaches it as a SIGINT (the graceful stop a Ctrl-C gives a local worker); a worker
    process that dies takes this Ray worker with it, so that Ray starts it again."""
    import multiprocessing

    import ray

    if os.path.isdir(driver_cwd):  # a node on the driver's machine: relative paths hold
        os.chdir(driver_cwd)
    os.environ.update(credentials or {})  # the tracking server's: the worker process inherits them
    tags = {
        NODE_TAG: ray.get_runtime_context().get_node_id(),
        NODE_IP_TAG: ray.util.get_node_ip_address(),
        WORKER_TAG: str(worker_index),
    }
    process = multiprocessing.get_context("spawn").Process(
        target=worker_main,
        args=(trial_context, storage_url, deadline, worker_index, os.getpid(), tags),
        name=f"latentseg-worker-{worker_index}",
    )
    process.start()
    stopping, unreachable = False, False
    while process.is_alive():
        process.join(STOP_POLL_S)
        if stopping or not process.is_alive():
            continue
        try:
            reason = ray.get(flag.get.remote(), timeout=30)
        except Exception as exc:  # the launch is gone (Ray then ends this task) or slow
            if not unreachable:
                print(
                    f"worker {worker_index}: cannot ask the launch whether it stopped "
                    f"({type(exc).__name__}); the study tells it at its next trial",
                    file=sys.stderr,
                    flush=True,
                )
            unreachable, reason = True, None
        if reason:
            os.kill(process.pid, signal.SIGINT)
            stopping = True
    if process.exitcode == 130 or stopping:
        from latentseg.train import TrainingInterrupted  # (only now: it imports torch)

        raise TrainingInterrupted("the launch", None)
    if process.exitcode != 0:  # killed (OOM, SIGKILL): Ray restarts a worker that dies
        print(
            f"worker {worker_index}: its process ended with {process.exitcode}; restarting",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)
    return 0


def worker_main(
    trial_context: TrialContext, storage_url: str | None, deadline: float | None,
    worker_index: int, parent: int, tags: dict[str, str],
) -> None:  # fmt: skip
    """The worker process a Ray worker starts: the local pool's worker process, imported
    there (the task that starts it does not import the training loop)."""
    from latentseg.study.worker import worker_process

    worker_process(trial_context, storage_url, deadline, worker_index, parent, tags)
