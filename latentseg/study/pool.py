"""Where a launch runs its workers: the small interface every pool has, and the pool a
launch gets (processes on this machine, or a Ray cluster)."""

from __future__ import annotations

import contextlib
from typing import Protocol

from latentseg.study.context import TrialContext
from latentseg.study.local_workers import local_pool
from latentseg.study.spec import LoadedStudy
from latentseg.tracking.store import resolve_tracking_uri


class WorkerPool(Protocol):
    """What a launch asks of the place its workers run."""

    @property
    def threads(self) -> int:
        """The torch threads each worker gets."""
        ...

    def describe(self) -> dict[str, str]:
        """Tags for the launch's parent run (where the workers ran)."""
        ...

    def run(
        self, trial_context: TrialContext, storage_url: str | None, deadline: float | None,
        workers: int, stop,
    ) -> None:  # fmt: skip
        """Run ``workers`` workers (:func:`latentseg.study.worker.worker_loop`) until each has
        found the queue empty or the deadline passed; ``stop()`` true stops them."""
        ...


def open_pool(
    ray: str | None, workers: int, loaded: LoadedStudy, storage: str | None,
    tracking_uri: str | None,
) -> contextlib.AbstractContextManager[WorkerPool]:  # fmt: skip
    """Where the workers run: processes on this machine, or a Ray cluster (connected, and
    checked to reach the study's storage and tracking store, before anything starts)."""
    if ray is None:
        return local_pool(workers)
    from latentseg.study.ray_workers import ray_cluster  # Ray only where it is asked for

    uri = resolve_tracking_uri(tracking_uri, loaded.base.tracking.tracking_uri)
    return ray_cluster(ray, loaded, storage or loaded.spec.storage, uri)
