"""``latentseg study``: the parent creates the study, queues its trials and the MLflow parent
run, then runs W workers on the same storage and summarises the study at the end.

A launch reads as its phases (:func:`run_study`): load the spec, open the storage and the
tracking store, recover what dead launches left, queue, run the workers round after round,
summarise. The rest has rooms of its own: the worker loop every pool runs in
:mod:`latentseg.study.worker`, the pools behind :class:`~latentseg.study.pool.WorkerPool`
(:mod:`~latentseg.study.local_workers`, :mod:`~latentseg.study.ray_workers`), the launch's
checks in :mod:`latentseg.study.checks`, its progress line in :mod:`latentseg.study.progress`,
storage concerns in :mod:`latentseg.study.storage`, MLflow ones in the tracking store
(:class:`~latentseg.tracking.store.TrackingStore`, :mod:`latentseg.tracking.study`). The
adaptive judge is handed in (:mod:`latentseg.study.judgement`): the study never imports the
report."""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from latentseg.config import flatten
from latentseg.errors import ConfigError
from latentseg.study import rounds
from latentseg.study.checks import check_fingerprint, check_store
from latentseg.study.context import TrialContext
from latentseg.study.judgement import Judge
from latentseg.study.pool import WorkerPool, open_pool
from latentseg.study.progress import Progress
from latentseg.study.samplers import build_pruner, build_sampler
from latentseg.study.spec import LoadedStudy, load_study_spec, redact
from latentseg.study.storage import (
    forget_stops,
    mark_launch_stopped,
    open_storage,
    queue_lock,
    recover_dead_trials,
    storage_of,
)
from latentseg.study.trials import latest_attempts, queue_trials
from latentseg.study.worker import quiet_optuna
from latentseg.tracking.store import TrackingStore, resolve_tracking_uri
from latentseg.tracking.study import (
    close_dead_study_runs,
    close_orphans,
    log_round,
    log_study_summary,
    running_launches,
    start_study_run,
)
from latentseg.train import TrainingInterrupted
from latentseg.train.interrupt import StopSignal, ignore_interrupts


@dataclass
class StudyResult:
    study_name: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    storage: str
    summary: dict[str, Any]
    wall_time_s: float
    workers_started: int = 0  # 0: nothing was queued, so this launch trained nothing


@dataclass
class Launch:
    """One launch of a study: its spec, its Optuna storage and study, its tracking store and
    experiment, and how it runs (workers, deadline)."""

    loaded: LoadedStudy
    spec_path: str
    storage_url: str
    storage: optuna.storages.BaseStorage
    study: optuna.Study
    store: TrackingStore
    experiment_id: str
    workers: int
    deadline: float | None
    # where the workers run: LocalWorkers, or ray_workers.RayWorkers on a Ray cluster
    pool: WorkerPool | None = None

    def recover_dead_trials(self) -> None:
        """Fail (and queue again) the trials of dead workers, and close the runs they left."""
        for trial in recover_dead_trials(self.study, self.loaded.spec.max_retry):
            close_orphans(
                self.store, self.experiment_id, self.loaded.name, trial.number,
                "worker process died",
            )  # fmt: skip

    def waiting(self) -> list:
        return self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))

    def late(self) -> bool:
        return bool(self.deadline) and time.time() >= self.deadline


@quiet_optuna()
def run_study(
    spec_path: str,
    n_trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    tracking_uri: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    progress: bool = True,
    judge: Judge | None = None,
    ray: str | None = None,
) -> StudyResult:
    """Run (or resume) the study in ``spec_path`` with ``workers`` processes. With adaptive
    seeds, ``judge`` takes the verdicts after each round: the command line hands it the
    ablation report's, :func:`latentseg.report.adaptive.judge`; an API caller passes it (or
    one of its own, :data:`latentseg.study.judgement.Judge`). ``ray`` runs the workers on a
    Ray cluster instead (``local``: one started for this launch; ``auto``;
    ``ray://host:10001``)."""
    started = time.time()
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    loaded = load_study_spec(spec_path, overrides, n_trials)
    if loaded.spec.adaptive and judge is None:
        raise ConfigError(
            f"{spec_path}: a study with adaptive seeds needs a judge to decide each round: "
            "run_study(..., judge=latentseg.report.adaptive.judge), as `latentseg study` does"
        )
    with open_pool(ray, workers, loaded, storage, tracking_uri) as pool:
        return _run_launch(
            loaded, spec_path, workers, storage, tracking_uri, progress, judge, started, pool
        )


def _run_launch(
    loaded: LoadedStudy, spec_path: str, workers: int, storage: str | None,
    tracking_uri: str | None, progress: bool, judge: Judge | None, started: float,
    pool: WorkerPool,
) -> StudyResult:  # fmt: skip
    launch = open_launch(loaded, spec_path, workers, storage, tracking_uri, started)
    launch.pool = pool
    recover(launch)
    with queue_lock(launch.storage_url):
        queue_trials(launch.study, loaded)
        # the stops of launches that are over (those still running may need theirs)
        forget_stops(
            launch.study, running_launches(launch.store, launch.experiment_id, loaded.name)
        )
    # Signals only set a flag from here on, so the parent run is always closed and the
    # summary written, whatever arrives when.
    with StopSignal() as stop:
        trial_context = start_parent_run(launch)
        status, summary, workers_started = run_and_summarize(
            launch, trial_context, judge, stop, progress
        )
    if status == "KILLED":
        raise TrainingInterrupted(str(stop.received or "SIGINT"))
    return StudyResult(
        loaded.name,
        trial_context.parent_run_id,
        launch.experiment_id,
        launch.store.uri,
        redact(launch.storage_url),
        summary,
        time.time() - started,
        workers_started,
    )


def open_launch(
    loaded: LoadedStudy, spec_path: str, workers: int, storage: str | None,
    tracking_uri: str | None, started: float,
) -> Launch:  # fmt: skip
    """Open the study's storage, its tracking store and the Optuna study, and check that this
    launch may continue it (the same spec, the same tracking store)."""
    spec = loaded.spec
    uri = resolve_tracking_uri(tracking_uri, loaded.base.tracking.tracking_uri)
    # Without --storage, the study lives in the journal of the store its runs go to.
    storage_url, optuna_storage = open_storage(
        loaded.name, storage or spec.storage, spec.max_retry, workers, uri
    )
    # MLflow first: an unreachable tracking server must fail before the study is touched.
    store = TrackingStore.open(uri)
    study = _open_study(loaded, spec_path, optuna_storage)
    check_fingerprint(study, loaded, spec_path)
    check_store(study, loaded, store, spec_path, storage_url)
    experiment_id = store.experiment(spec.mlflow_experiment or loaded.name)
    deadline = started + spec.timeout if spec.timeout else None
    return Launch(
        loaded, spec_path, storage_url, optuna_storage, study, store, experiment_id, workers,
        deadline,
    )  # fmt: skip


def _open_study(loaded: LoadedStudy, spec_path: str, storage) -> optuna.Study:
    """The study, created or loaded; its directions must be the spec's. A study of several
    objectives names them (``set_metric_names``: optuna-dashboard labels its axes)."""
    directions = loaded.spec.directions
    try:
        study = optuna.create_study(
            study_name=loaded.name,
            storage=storage,
            directions=directions,
            load_if_exists=True,
            sampler=build_sampler(loaded),
            pruner=build_pruner(loaded),
        )
    except ValueError as exc:
        raise ConfigError(f"{spec_path}: cannot use study '{loaded.name}': {exc}") from None
    found = [direction.name.lower() for direction in study.directions]
    if found != directions:
        raise ConfigError(
            f"{spec_path}: study '{loaded.name}' exists with direction(s) {', '.join(found)}, "
            f"the spec asks {', '.join(directions)}"
        )
    names = [objective.metric for objective in loaded.spec.objective_list]
    if study.metric_names is None:
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and kept since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    elif loaded.spec.objectives and study.metric_names != names:
        raise ConfigError(
            f"{spec_path}: study '{loaded.name}' exists with objectives "
            f"{', '.join(study.metric_names)}, the spec asks {', '.join(names)}"
        )
    return study


def recover(launch: Launch) -> None:
    """What dead launches and workers left: their parent runs end KILLED, their trials are
    failed and queued again, and the trial and seed runs they left RUNNING are closed."""
    close_dead_study_runs(launch.store, launch.experiment_id, launch.loaded.name)
    launch.recover_dead_trials()


def start_parent_run(launch: Launch) -> TrialContext:
    """This launch's parent run, with the spec as its params; returns the context its
    workers run trials in."""
    loaded = launch.loaded
    parent_run_id = start_study_run(
        launch.store, launch.experiment_id, loaded.name, redact(launch.storage_url),
        loaded.path, spec_params(loaded, launch.storage_url), launch.workers,
    )  # fmt: skip
    if tags := launch.pool.describe():
        launch.store.set_tags(parent_run_id, tags)
    return TrialContext(
        loaded, launch.store.uri, launch.experiment_id, parent_run_id, launch.pool.threads
    )


def spec_params(loaded: LoadedStudy, storage_url: str) -> dict[str, Any]:
    """The spec as the parent run's params: ``study.*`` (the storage redacted), the looks of
    adaptive seeds (the report takes them from here) and ``search_space.*``."""
    spec = loaded.spec
    params = {
        f"study.{k}": v
        for k, v in flatten(spec.model_dump(mode="json", exclude={"search_space"})).items()
    }
    params["study.storage"] = redact(storage_url)  # never a password
    if spec.adaptive:
        params["study.seeds.looks"] = ",".join(map(str, spec.adaptive.looks()))
    params.update(
        {f"search_space.{k}": p.model_dump(mode="json") for k, p in spec.search_space.items()}
    )
    return params


def run_and_summarize(
    launch: Launch, trial_context: TrialContext, judge: Judge | None, stop, progress: bool
) -> tuple[str, dict[str, Any], int]:
    """Run the rounds with a progress bar, then summarise the study on the parent run and
    close it: FINISHED, KILLED (a stop; the summary skips its plots) or FAILED (an error,
    which propagates). Returns the status, the summary and the workers started."""
    monitor = Progress(
        launch.study,
        len(latest_attempts(launch.study.get_trials(deepcopy=False))),
        launch.loaded.spec.directions,
        progress,
        launch.loaded,
    )
    monitor.start()
    status, workers_started = "FAILED", 0
    try:
        workers_started = run_rounds(launch, trial_context, judge, stop, monitor)
        status = "KILLED" if stop() else "FINISHED"
    except (TrainingInterrupted, KeyboardInterrupt):
        status = "KILLED"
    finally:
        monitor.finish()
        summary = summarize(launch, trial_context.parent_run_id, status)
    return status, summary, workers_started


def run_rounds(
    launch: Launch, trial_context: TrialContext, judge: Judge | None, stop, monitor: Progress
) -> int:
    """Run workers while trials are queued: after each pass the dead workers' trials are
    queued again (up to ``max_retry`` passes a round), other launches' running trials are
    waited for, and with adaptive seeds the next round is queued; until nothing is left, a
    stop or the deadline. Returns the number of workers started (0: nothing was queued)."""
    study, spec = launch.study, launch.loaded.spec
    passes = 0  # worker passes in this round: the round, then retries of dead workers
    workers_started = 0
    round_ = rounds.current_round(study.get_trials(deepcopy=False))
    stop = StopAnnouncer(stop, study, trial_context.parent_run_id, launch.storage_url)
    while passes <= spec.max_retry:
        if launch.waiting():
            launch.pool.run(
                trial_context, launch.storage_url, launch.deadline, launch.workers, stop
            )
            workers_started += launch.workers
        passes += 1  # (a relaunch with nothing queued starts no worker)
        launch.recover_dead_trials()
        waiting = launch.waiting()
        if not waiting and not stop():
            # Trials still RUNNING belong to other launches (other machines): wait until
            # they finish or their heartbeat lapses and they come back queued.
            waiting = _wait_for_other_launches(launch, stop)
        late = launch.late()
        if not waiting and not stop() and not late and spec.adaptive:
            _next_round(launch, judge, trial_context, monitor)
            # the next round's trials, queued here or by another launch of the study
            trials = study.get_trials(deepcopy=False)
            waiting = [t for t in trials if t.state == TrialState.WAITING]
            if rounds.current_round(trials) > round_:  # a new round: fresh passes
                round_, passes = rounds.current_round(trials), 0
        if stop() or not waiting or late:
            break
    return workers_started


class StopAnnouncer:
    """The launch's stop as its worker pools poll it, recorded in the study the first time
    it is seen, so that workers stop taking trials even where the signal the pool forwards
    reaches them late or never (a Ray worker whose poll of the launch fails)."""

    def __init__(self, stop, study: optuna.Study, launch_id: str, storage_url: str) -> None:
        self.stop, self.study, self.launch_id = stop, study, launch_id
        self.storage_url = storage_url
        self.announced = False

    @property
    def received(self) -> str | None:
        return self.stop.received

    def __call__(self) -> bool:
        stopped = self.stop()
        if stopped and not self.announced:
            self.announced = True
            try:
                mark_launch_stopped(
                    self.study, self.launch_id, str(self.stop.received), self.storage_url
                )
            except Exception as exc:  # the signals still go out; the storage says why not
                print(f"could not record the stop in the study: {exc}", file=sys.stderr)
        return stopped


def summarize(launch: Launch, parent_run_id: str, status: str) -> dict[str, Any]:
    """The study's summary logged on the parent run (without plots after a stop: a stop is
    quick, the next launch plots), which is then closed with ``status`` whatever happens."""
    try:
        final = optuna.load_study(study_name=launch.loaded.name, storage=launch.storage)
        return log_study_summary(
            launch.store,
            parent_run_id,
            final,
            [objective.metric for objective in launch.loaded.spec.objective_list],
            plots=status != "KILLED",
        )
    finally:
        with ignore_interrupts():
            launch.store.end_run(parent_run_id, status)


def _wait_for_other_launches(launch: Launch, stop) -> list:
    """With a heartbeat storage (shared by machines), poll while other launches hold RUNNING
    trials: returns the WAITING trials once some are queued again (a dead machine's, failed by
    its lapsed heartbeat), or [] when none is left running. Journal storages return at once."""
    get_interval = getattr(storage_of(launch.study), "get_heartbeat_interval", None)
    interval = get_interval() if get_interval else None
    if not interval:
        return []
    while not stop() and not launch.late():
        recover(launch)  # a dead launch's parent too (on this host)
        waiting = launch.waiting()
        if waiting:
            return waiting
        if not launch.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return []
        time.sleep(min(interval, 5))
    return []


def _next_round(
    launch: Launch, judge: Judge, trial_context: TrialContext, monitor: Progress
) -> int:
    """Adaptive seeds, once the current round has finished everywhere: take its look's
    verdicts, log them on the parent run, and queue the next round's seeds for the points
    that need them (under the queue lock, once per round whichever launch gets there first).
    Returns the number of trials queued."""
    loaded = launch.loaded
    with queue_lock(launch.storage_url):
        trials = launch.study.get_trials(deepcopy=False)
        if not rounds.round_finished(trials):
            return 0  # another launch queued the next round first: run it
        current = rounds.current_round(trials)
        judgement = judge(loaded, trial_context.tracking_uri, current)
        planned = rounds.plan(loaded, trials, judgement, current)
        queued = rounds.queue_round(launch.study, planned, current + 1)
    spent = rounds.seeds_spent(trials, loaded.seeds)
    log_round(
        launch.store, trial_context.parent_run_id, current,
        {"open": judgement.open, "decided": judgement.decided, "queued": queued,
         "seed_runs": spent},
        judgement.table,
    )  # fmt: skip
    monitor.open = judgement.open
    looks = loaded.spec.adaptive.looks()
    added = sum(len(p["seeds"]) for p in planned)
    print(
        f"round {current}/{len(looks)} done: {judgement.decided} decided, {judgement.open} open; "
        + (
            f"round {current + 1} adds {added} seed runs to {queued} point(s) "
            f"({looks[current]} seeds each)"
            if queued
            else "no more rounds"
        )
        + f"; {spent + added}/{rounds.budget(loaded)} seed runs",
        file=sys.stderr,
        flush=True,
    )
    return queued
