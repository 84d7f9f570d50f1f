"""One worker of a study: it takes queued trials from the Optuna storage until none is left,
and tells the study how each ended. Every pool runs this same loop: the launch's own process
(one worker), a worker process on this machine, or one a Ray worker starts."""

from __future__ import annotations

import contextlib
import os
import sys
import time

import optuna
from optuna.trial import TrialState

from latentseg.errors import LatentSegError
from latentseg.study.context import TrialContext
from latentseg.study.objective import run_trial
from latentseg.study.samplers import build_pruner, build_sampler
from latentseg.study.spec import LoadedStudy
from latentseg.study.storage import (
    Heartbeat,
    launch_stopped,
    make_storage,
    pop_waiting_trial,
    retry,
    storage_of,
)
from latentseg.study.trials import FINISHED_STATES
from latentseg.tracking.store import TrackingStore
from latentseg.train import TrainingInterrupted
from latentseg.train.interrupt import StopSignal


class quiet_optuna(contextlib.ContextDecorator):
    """Optuna's own log at ERROR while a study runs: its warnings ("Trial 3 failed with value
    None", "no complete trials" from a plot) repeat what latentseg reports in its own words.
    The previous level comes back after, so a host process (a notebook) keeps its setting."""

    def __enter__(self) -> quiet_optuna:
        self._level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        return self

    def __exit__(self, *exc) -> None:
        optuna.logging.set_verbosity(self._level)


class TaggedStore(TrackingStore):
    """The tracking store, with ``tags`` (a Ray worker's node and index) on every run it
    opens."""

    def __init__(self, store: TrackingStore, tags: dict[str, str]) -> None:
        super().__init__(store.client, store.uri)
        self.tags = tags

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        return super().create_run(experiment_id, run_name, {**tags, **self.tags})


def worker_process(
    trial_context: TrialContext, storage_url: str | None, deadline: float | None, worker_index: int,
    parent_pid: int | None = None, tags: dict[str, str] | None = None,
    environ: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """A worker process of latentseg's own (started by a local pool or a Ray worker): in the
    environment ``environ`` (the launch's, where the process was forked from a server started
    earlier), tuned as the CLI is, it runs :func:`worker_loop`, its runs tagged with ``tags``;
    a stop ends it with exit code 130."""
    import matplotlib

    import latentseg

    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    latentseg.tune_process()
    matplotlib.use("Agg")
    store = None
    if tags:
        store = TaggedStore(TrackingStore.open(trial_context.tracking_uri), tags)
    # the launch is watched through this process's parent: the launch itself, or the server
    # it forked from, which ends with the launch
    watched = (parent_pid, os.getppid()) if parent_pid is not None else None
    try:
        worker_loop(trial_context, storage_url, deadline, worker_index, watched, store=store)
    except (TrainingInterrupted, KeyboardInterrupt):
        sys.exit(130)


@quiet_optuna()
def worker_loop(
    trial_context: TrialContext,
    storage_url: str | None,
    deadline: float | None,
    worker_index: int = 0,
    launch: tuple[int, int] | None = None,
    store: TrackingStore | None = None,
) -> int:
    """Take queued trials until none is left, the deadline passes or a signal arrives;
    returns the number of trials run. A trial interrupted by a signal is failed and queued
    again without spending a retry, then the interruption propagates; a trial whose sampled
    config is invalid is failed and not retried. ``store`` (default: opened from
    ``trial_context.tracking_uri``) gets the trial runs. ``launch``: the launch's pid and this
    process's parent's when it started, watched between trials (:func:`_launch_gone`)."""
    import torch

    threads = torch.get_num_threads()  # restored at the end: a launch of one worker runs here
    torch.set_num_threads(trial_context.threads)
    try:
        return _take_trials(trial_context, storage_url, deadline, worker_index, launch, store)
    finally:
        torch.set_num_threads(threads)


def _take_trials(
    trial_context: TrialContext,
    storage_url: str | None,
    deadline: float | None,
    worker_index: int,
    launch: tuple[int, int] | None,
    store: TrackingStore | None,
) -> int:
    study = _load_worker_study(trial_context.study, storage_url, worker_index)
    store = store or TrackingStore.open(trial_context.tracking_uri)
    done = 0
    with StopSignal() as stop:
        while not stop() and (deadline is None or time.time() < deadline):
            if _launch_gone(launch, worker_index):
                break
            if reason := launch_stopped(study, trial_context.parent_run_id):
                raise TrainingInterrupted(reason, None)  # a signal that did not reach us
            popped = pop_waiting_trial(study)
            if popped is None:
                break
            _run_and_tell(study, *popped, trial_context, store)
            done += 1
        if stop():
            raise TrainingInterrupted(str(stop.received), None)
    return done


def _load_worker_study(loaded: LoadedStudy, storage_url: str | None, worker_index: int):
    """The study as a worker sees it: its own sampler seed, offset by the trials finished."""
    storage = make_storage(storage_url, loaded.spec.max_retry, workers=1)
    finished = len(
        optuna.load_study(study_name=loaded.name, storage=storage).get_trials(
            deepcopy=False, states=FINISHED_STATES
        )
    )
    return optuna.load_study(
        study_name=loaded.name,
        storage=storage,
        sampler=build_sampler(loaded, worker_index, finished),
        pruner=build_pruner(loaded),
    )


def _launch_gone(launch: tuple[int, int] | None, worker_index: int) -> bool:
    """Whether the launch that started this worker is gone (SIGKILL, OOM): the worker takes
    no more trials; its parent run and anything left are closed by the next launch.
    ``launch`` is the launch's pid and this process's parent's when it started (the launch,
    or the server it forked from)."""
    if launch is None:
        return False
    parent_pid, parent = launch
    if os.getppid() == parent and _alive(parent_pid):
        return False
    print(
        f"worker {worker_index}: the launch (pid {parent_pid}) is gone; taking no more trials",
        file=sys.stderr,
        flush=True,
    )
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process took the number
        return False
    return True


def _run_and_tell(
    study: optuna.Study, trial: optuna.Trial, trial_id: int, trial_context: TrialContext,
    store: TrackingStore,
) -> None:  # fmt: skip
    """Run one popped trial and tell the study how it ended: pruned; failed and queued again
    (an exception, up to ``max_retry``; a signal, without spending a retry, and the signal
    propagates); failed for good (an invalid sampled config); or its value."""
    max_retry = trial_context.study.spec.max_retry
    attrs = storage_of(study).get_trial(trial_id).system_attrs
    with Heartbeat(study, trial_id):
        try:
            value = run_trial(trial, trial_context, store, attrs)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except (TrainingInterrupted, KeyboardInterrupt):
            study.tell(trial, state=TrialState.FAIL)
            retry(study, storage_of(study).get_trial(trial_id), max_retry, count=False)
            raise
        except LatentSegError as exc:  # an invalid sampled config: retrying cannot help
            study.tell(trial, state=TrialState.FAIL)
            print(f"trial {trial.number} failed: {exc}", file=sys.stderr, flush=True)
        except Exception as exc:
            study.tell(trial, state=TrialState.FAIL)
            print(
                f"trial {trial.number} failed: {type(exc).__name__}: {exc}",
                file=sys.stderr,
                flush=True,
            )
            retry(study, storage_of(study).get_trial(trial_id), max_retry=max_retry)
        else:
            study.tell(trial, value)
