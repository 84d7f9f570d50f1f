"""What a worker needs to run a study's trials, apart from the code: it crosses into worker
processes and Ray workers, pickled, and unpickles without torch or the training loop (a Ray
worker's task only hands it on, :mod:`latentseg.study.ray_task`)."""

from __future__ import annotations

from dataclasses import dataclass

from latentseg.study.spec import LoadedStudy


@dataclass
class TrialContext:
    """The loaded study, the tracking store and the launch's parent run its trials log under,
    and the torch threads each worker uses."""

    study: LoadedStudy
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    threads: int
