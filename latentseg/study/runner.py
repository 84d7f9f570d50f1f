"""``latentseg study``: the parent creates the study, queues its trials and the MLflow parent
run, then runs W workers on the same storage and summarises the study at the end.

A launch reads as its phases (:func:`run_study`): load the spec, open the storage and the
tracking store, recover what dead launches left, queue, run the workers round after round,
summarise. Storage concerns live in :mod:`latentseg.study.storage`, MLflow ones in the
tracking store (:class:`~latentseg.tracking.store.TrackingStore`,
:mod:`latentseg.tracking.study`)."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from latentseg.errors import ConfigError, LatentSegError
from latentseg.study import rounds
from latentseg.study.judgement import Judge
from latentseg.study.objective import TrialContext, run_trial
from latentseg.study.spec import LoadedStudy, load_study_spec, redact
from latentseg.study.storage import (
    Heartbeat,
    forget_stops,
    launch_stopped,
    make_storage,
    mark_launch_stopped,
    open_storage,
    pop_waiting_trial,
    queue_lock,
    recover_dead_trials,
    retry,
    storage_of,
)
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

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


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


def build_sampler(
    loaded: LoadedStudy, worker_index: int = 0, offset: int = 0
) -> optuna.samplers.BaseSampler:
    """The spec's sampler; each worker gets its own seed (``seed + worker_index``): workers
    sharing one seed would propose the same points."""
    sampler = loaded.spec.sampler
    # ``offset`` (trials already in the study) keeps a resumed launch from replaying the
    # first launch's random proposals.
    seed = None if sampler.seed is None else sampler.seed + worker_index + 100_003 * offset
    if sampler.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sampler.n_startup_trials)
    # grid points are queued explicitly; the sampler never picks one
    return optuna.samplers.RandomSampler(seed=seed)


def build_pruner(loaded: LoadedStudy) -> optuna.pruners.BasePruner:
    pruner = loaded.spec.pruner
    if pruner.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_steps
        )
    if pruner.name == "hyperband":
        max_resource = loaded.base.train.epochs * len(loaded.seeds)
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource,
            max_resource=max_resource,
            reduction_factor=pruner.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def queue_trials(study: optuna.Study, loaded: LoadedStudy) -> int:
    """Queue what the study still needs; returns how many trials were added.

    Grid: every point that has no trial yet, in any state (a failed point was retried when
    it failed, up to ``max_retry``). Other samplers: empty slots up to ``n_trials``, which
    the sampler fills when a worker starts them (retries are not counted as slots)."""
    trials = study.get_trials(deepcopy=False)
    if loaded.spec.sampler.name == "grid":
        taken = {rounds.point_key(t.system_attrs.get("fixed_params") or t.params) for t in trials}
        missing = [p for p in loaded.spec.grid_points() if rounds.point_key(p) not in taken]
        if loaded.spec.n_trials is not None:
            missing = missing[: max(0, loaded.spec.n_trials - len(taken))]
        for point in missing:
            study.enqueue_trial(point)
        return len(missing)
    slots = [t for t in trials if "failed_trial" not in t.system_attrs]
    needed = max(0, loaded.spec.total_trials() - len(slots))
    for _ in range(needed):
        study.enqueue_trial({})
    return needed


@quiet_optuna()
def worker_loop(
    trial_context: TrialContext,
    storage_url: str | None,
    deadline: float | None,
    worker_index: int = 0,
    parent_pid: int | None = None,
    store: TrackingStore | None = None,
) -> int:
    """Take queued trials until none is left, the deadline passes or a signal arrives;
    returns the number of trials run. A trial interrupted by a signal is failed and queued
    again without spending a retry, then the interruption propagates; a trial whose sampled
    config is invalid is failed and not retried. ``store`` (default: opened from
    ``trial_context.tracking_uri``) gets the trial runs."""
    import torch

    torch.set_num_threads(trial_context.threads)
    study = _load_worker_study(trial_context.study, storage_url, worker_index)
    store = store or TrackingStore.open(trial_context.tracking_uri)
    done = 0
    with StopSignal() as stop:
        while not stop() and (deadline is None or time.time() < deadline):
            if _launch_gone(parent_pid, worker_index):
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


def _launch_gone(parent_pid: int | None, worker_index: int) -> bool:
    """Whether the launch that started this worker is gone (SIGKILL, OOM): the worker takes
    no more trials; its parent run and anything left are closed by the next launch."""
    if parent_pid is None or os.getppid() == parent_pid:
        return False
    print(
        f"worker {worker_index}: the launch (pid {parent_pid}) is gone; taking no more trials",
        file=sys.stderr,
        flush=True,
    )
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


def worker_devices(workers: int, gpus: int, visible: str | None = None) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` for each worker: with several GPUs and several workers, one
    GPU per worker (round-robin when there are more workers than GPUs), taken from the ids
    already visible; ``None`` (inherit) otherwise."""
    if workers < 2 or gpus < 2:
        return [None] * workers
    ids = [i.strip() for i in visible.split(",") if i.strip()] if visible else []
    ids = ids[:gpus] or [str(i) for i in range(gpus)]
    return [ids[i % len(ids)] for i in range(workers)]


def _worker_process(
    trial_context: TrialContext,
    storage_url: str | None,
    deadline: float | None,
    worker_index: int,
    parent_pid: int | None = None,
) -> None:
    import matplotlib

    import latentseg

    latentseg.tune_process()  # a worker process of latentseg's own, tuned as the CLI is
    matplotlib.use("Agg")
    try:
        worker_loop(trial_context, storage_url, deadline, worker_index, parent_pid)
    except (TrainingInterrupted, KeyboardInterrupt):
        sys.exit(130)


def latest_attempts(trials) -> list:
    """Each trial's latest attempt: a trial failed and queued again (a retry, or one stopped
    by a signal) counts once, as the attempt that replaced it, never as finished."""
    latest: dict[int, Any] = {}
    for trial in trials:
        first = trial.system_attrs.get("failed_trial", trial.number)
        if first not in latest or trial.number > latest[first].number:
            latest[first] = trial
    return list(latest.values())


class Progress(threading.Thread):
    """Polls the storage: a bar over trials with the best value so far; with adaptive seeds,
    also the round, the comparisons still open and the seed runs spent against the budget."""

    def __init__(
        self, study: optuna.Study, total: int, direction: str, enabled: bool, loaded=None
    ) -> None:
        super().__init__(daemon=True)
        self.study, self.total, self.direction, self.enabled = study, total, direction, enabled
        self.loaded = loaded if loaded is not None and loaded.spec.adaptive else None
        self.open: int | None = None  # set by the launch after each round's look
        self.stop_event = threading.Event()

    def finish(self) -> None:
        """Stop polling (the bar shows its last state) and wait for the thread."""
        self.stop_event.set()
        self.join(timeout=10)

    def snapshot(self) -> tuple[int, float | None, str]:
        every = self.study.get_trials(deepcopy=False)
        attempts = latest_attempts(every)
        trials = [t for t in attempts if t.state in FINISHED_STATES]
        values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        best = (max if self.direction == "maximize" else min)(values) if values else None
        self.total = len(attempts)
        return len(trials), best, self.round_status(every)

    def round_status(self, trials) -> str:
        """``round 2/3  open 3  seeds 24/60`` for adaptive seeds, else empty."""
        if self.loaded is None:
            return ""
        looks = len(self.loaded.spec.adaptive.looks())
        spent = rounds.seeds_spent(trials, self.loaded.seeds)
        return (
            f"round {rounds.current_round(trials)}/{looks}  "
            f"open {'-' if self.open is None else self.open}  "
            f"seeds {spent}/{rounds.budget(self.loaded)}"
        )

    def run(self) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        bar = tqdm(
            total=self.total, desc="trials", file=sys.stderr, dynamic_ncols=True, disable=not tty
        )
        last = (-1, None, "")
        while True:
            stopping = self.stop_event.wait(2.0)
            try:
                finished, best, status = self.snapshot()
            except Exception:
                continue
            if (finished, best, status) != last:
                bar.total, bar.n = self.total, finished
                bar.set_postfix_str(
                    f"best={'-' if best is None else f'{best:.4f}'}"
                    + (f"  {status}" if status else ""),
                    refresh=True,
                )
                if not tty:
                    print(
                        f"trials finished {finished}/{self.total}  best {'-' if best is None else f'{best:.4f}'}"
                        + (f"  {status}" if status else ""),
                        file=sys.stderr,
                        flush=True,
                    )
                last = (finished, best, status)
            if stopping:
                bar.close()
                return


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
    # where the workers run: LocalWorkers, or ray_workers.RayWorkers on a Ray cluster (both
    # have threads, describe and run)
    pool: Any = None

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
    with _worker_pool(ray, workers, loaded, storage, tracking_uri) as pool:
        return _run_launch(
            loaded, spec_path, workers, storage, tracking_uri, progress, judge, started, pool
        )


def _worker_pool(
    ray: str | None, workers: int, loaded: LoadedStudy, storage: str | None, tracking_uri
):  # fmt: skip
    """Where the workers run: processes on this machine, or a Ray cluster (connected, and
    checked to reach the study's storage and tracking store, before anything starts)."""
    if ray is None:
        return contextlib.nullcontext(LocalWorkers(workers))
    from latentseg.study.ray_workers import ray_cluster

    uri = resolve_tracking_uri(tracking_uri, loaded.base.tracking.tracking_uri)
    return ray_cluster(ray, loaded, storage or loaded.spec.storage, uri)


def _run_launch(
    loaded: LoadedStudy, spec_path: str, workers: int, storage: str | None,
    tracking_uri: str | None, progress: bool, judge: Judge | None, started: float, pool,
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
    _check_fingerprint(study, loaded, spec_path)
    _check_store(study, loaded, store, spec_path, storage_url)
    experiment_id = store.experiment(spec.mlflow_experiment or loaded.name)
    deadline = started + spec.timeout if spec.timeout else None
    return Launch(
        loaded, spec_path, storage_url, optuna_storage, study, store, experiment_id, workers,
        deadline,
    )  # fmt: skip


def _open_study(loaded: LoadedStudy, spec_path: str, storage) -> optuna.Study:
    """The study, created or loaded; its direction must be the spec's."""
    direction = loaded.spec.objective.resolved_direction
    try:
        study = optuna.create_study(
            study_name=loaded.name,
            storage=storage,
            direction=direction,
            load_if_exists=True,
            sampler=build_sampler(loaded),
            pruner=build_pruner(loaded),
        )
    except ValueError as exc:
        raise ConfigError(f"{spec_path}: cannot use study '{loaded.name}': {exc}") from None
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"{spec_path}: study '{loaded.name}' exists with direction {study.direction.name.lower()}, the spec asks {direction}"
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
        for k, v in _flat(spec.model_dump(mode="json", exclude={"search_space"})).items()
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
        launch.loaded.spec.objective.resolved_direction,
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
            launch.loaded.spec.objective.metric,
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


def _fingerprint(loaded: LoadedStudy) -> str:
    """What a resumed launch must agree on: the spec (but its budget) and the base config."""
    import hashlib
    import json

    spec = loaded.spec.model_dump(
        mode="json", exclude={"n_trials", "timeout", "storage", "name", "report", "resources"}
    )
    base = loaded.base.config_hash(include_seed=True)
    return hashlib.sha256(json.dumps([spec, base], sort_keys=True).encode()).hexdigest()[:16]


def _check_fingerprint(study: optuna.Study, loaded: LoadedStudy, spec_path: str) -> None:
    key = "latentseg.fingerprint"
    current = _fingerprint(loaded)
    stored = study.user_attrs.get(key)
    if stored is None:
        study.set_user_attr(key, current)
    elif stored != current:
        raise ConfigError(
            f"{spec_path}: study '{loaded.name}' was started with a different spec or base experiment; "
            "resuming would mix configurations. Give the study a new `name`, or restore the original spec "
            "(only n_trials, timeout and storage may change between launches)."
        )


def _store_id(uri: str) -> str:
    """The tracking store as one string: a SQLite path made absolute."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri.rstrip("/")


def _check_store(
    study: optuna.Study, loaded: LoadedStudy, store: TrackingStore, spec_path: str,
    storage_url: str | None,
) -> None:  # fmt: skip
    """A study's trials name MLflow runs in one tracking store: a launch against another store
    would find its work done and summarise runs that store lacks. The study records its store
    at its first launch; a launch with another is refused (exit 2), naming both. A study from
    before that record is checked by its trials' run ids."""
    key = "latentseg.tracking_store"
    here = _store_id(store.uri)
    stored = study.user_attrs.get(key)
    if stored is None:
        ids = [
            t.user_attrs["mlflow_run_id"] for t in study.trials if "mlflow_run_id" in t.user_attrs
        ]
        if all(store.run(run_id) is not None for run_id in ids[:3]):
            study.set_user_attr(key, here)
            return
        stored = "another tracking store"
    if stored != here:
        where = redact(storage_url)
        raise ConfigError(
            f"{spec_path}: study '{loaded.name}' (in {where}) has its runs in {stored}, not in "
            f"{redact(here)}: relaunch with --tracking-uri {stored}, or keep this store and give "
            "the study a new `name` (or another --storage)"
        )


@dataclass(frozen=True)
class LocalWorkers:
    """Worker processes on this machine (``--workers`` without ``--ray``), the torch threads
    split between them: the pool a launch runs its workers in, as
    :class:`~latentseg.study.ray_workers.RayWorkers` is on a Ray cluster."""

    workers: int

    @property
    def threads(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.workers)

    def describe(self) -> dict[str, str]:
        return {}  # nothing to add to the parent run: its params name the workers

    def run(
        self, trial_context: TrialContext, storage_url: str | None, deadline: float | None,
        workers: int, stop,
    ) -> None:  # fmt: skip
        _run_workers(trial_context, storage_url, deadline, workers, stop)


def _run_workers(
    trial_context: TrialContext, storage_url: str | None, deadline: float | None, workers: int, stop
) -> None:
    if workers == 1:
        worker_loop(trial_context, storage_url, deadline)
        return
    spawn = multiprocessing.get_context("spawn")
    processes = [
        spawn.Process(
            target=_worker_process,
            args=(trial_context, storage_url, deadline, i, os.getpid()),
            name=f"latentseg-worker-{i}",
        )
        for i in range(workers)
    ]
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = worker_devices(workers, torch.cuda.device_count(), visible)
    try:
        for process, device in zip(processes, devices, strict=True):
            if device is not None:  # a spawned worker sees only its own GPU
                os.environ["CUDA_VISIBLE_DEVICES"] = device
            process.start()
    finally:
        if visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible
    forwarded, noticed = False, None
    try:
        while any(p.is_alive() for p in processes):
            if stop() and noticed is None:
                noticed = time.monotonic()
            # A signal to the parent alone (SIGTERM from a scheduler): stop the workers too.
            # A Ctrl-C reached them already through the terminal's process group; the SIGTERM
            # a second later then finds them stopping and does not relabel their stop.
            if noticed is not None and not forwarded and time.monotonic() - noticed > 1.0:
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


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    from latentseg.config import flatten

    return flatten(tree, prefix)


def trials_per_hour(result: StudyResult) -> float:
    finished = result.summary.get("trials", 0)
    return finished / result.wall_time_s * 3600 if result.wall_time_s > 0 else math.nan
