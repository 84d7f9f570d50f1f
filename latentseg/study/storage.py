"""Optuna storages, the trial queue and dead-trial recovery.

- Default: a JournalStorage with a file backend in the tracking store's ``optuna/`` folder
  (``default_journal``), safe for several worker processes on one machine. ``sqlite:///`` and ``postgresql://`` URLs give an
  RDBStorage with a heartbeat; a trial whose heartbeat stops is failed and retried.
- Every trial is created up front in the parent (grid points, or empty slots that the
  sampler fills when a worker starts them), and workers only *pop* WAITING trials with an
  atomic WAITING -> RUNNING transition. So a grid runs each point exactly once and a study
  runs exactly ``n_trials``, however many workers share it.
- Journal storages have no heartbeat: each running trial records its host, pid and process
  start time; a trial whose process is gone is failed and retried (``max_retry``).
- A RUNNING trial with neither owner nor claim (taken by something other than a latentseg
  worker, or by a version before claims) is failed and retried once it shows no sign of life
  for the heartbeat grace: started longer ago, and no heartbeat since.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from latentseg.errors import ConfigError
from latentseg.process import owner_alive, owner_record
from latentseg.study.journal import _CheckedJournal, repair_journal_tail

DEFAULT_JOURNAL = Path("mlruns") / "optuna" / "journal.log"  # of the default tracking store
# RDB storages: how often a running trial records a heartbeat, and how long a silent trial
# is given before another launch fails and retries it (env overrides for slow networks).
HEARTBEAT_INTERVAL_S = 20
GRACE_PERIOD_S = 60


def env_seconds(name: str, default: int) -> int:
    """A positive whole number of seconds from the environment, or ``default``."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(f"${name}={raw!r}: expected a positive whole number of seconds")
    return int(raw)


def default_journal(tracking_uri: str) -> Path:
    """The journal a study uses without ``--storage``: the one of the tracking store its runs
    go to, so a study and its runs never live in two stores that disagree. Beside a SQLite
    store, in its ``optuna/`` folder (``journal.log`` for a store named ``mlflow.db``, as the
    default ``mlruns/optuna/journal.log``; ``<name>.journal.log`` for another name, so two
    stores in one folder keep two journals); ``mlruns/optuna/journal.log`` of the working
    directory for a tracking server."""
    from latentseg.tracking.store import local_state_dir

    folder = local_state_dir(tracking_uri) / "optuna"
    if tracking_uri.startswith("sqlite:///"):
        stem = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]).stem
        if stem and stem != "mlflow":
            return folder / f"{stem}.journal.log"
    return folder / "journal.log"


OWNER_ATTR = "latentseg_owner"  # {"host", "pid", "start"} of the process running a trial
CLAIM_PREFIX = "latentseg_claim:"  # + host:pid:start of a process about to take a trial
# {a launch's parent run id: why it was stopped}, for the launches not over yet: one study
# attribute, as Optuna's storages cannot delete one (launches before kept one each, under
# "latentseg_stop:" + the run id; those stay, unread)
STOPS_ATTR = "latentseg_stops"


def open_storage(
    name: str, url: str | None, max_retry: int, workers: int, tracking_uri: str
) -> tuple[str, optuna.storages.BaseStorage]:
    """The URL and the storage of the study ``name``: ``url`` (``--storage`` or the spec's),
    else the journal of the tracking store its runs go to (:func:`default_journal`); a study
    found only in the older shared journal is pointed at (:func:`note_older_journal`)."""
    journal = default_journal(tracking_uri)
    storage_url = url or f"journal:{journal}"
    storage = make_storage(storage_url, max_retry, workers)
    if not url:
        note_older_journal(name, storage, journal)
    return storage_url, storage


def note_older_journal(name: str, storage, journal: Path) -> None:
    """Before studies kept the journal of their tracking store, every store's studies went to
    ``mlruns/optuna/journal.log`` of the working directory. A study found only there is not
    taken over silently (its runs may be in another store): the launch says where it is."""
    if not DEFAULT_JOURNAL.is_file() or DEFAULT_JOURNAL.resolve() == journal.resolve():
        return
    if name in optuna.get_all_study_names(storage):
        return
    try:
        older = optuna.storages.JournalStorage(JournalFileBackend(str(DEFAULT_JOURNAL)))
        found = name in optuna.get_all_study_names(older)
    except Exception:  # noqa: BLE001 - an unreadable older journal: nothing to point at
        return
    if found:
        print(
            f"note: a study '{name}' is in {DEFAULT_JOURNAL}, the journal every store shared "
            f"before; this launch starts it afresh in {journal}, the journal of its tracking "
            f"store. To continue the older one, pass --storage journal:{DEFAULT_JOURNAL}",
            file=sys.stderr,
            flush=True,
        )


def make_storage(url: str | None, max_retry: int, workers: int = 1) -> optuna.storages.BaseStorage:
    """The storage for ``url`` (None: the embedded journal file)."""
    if url is None or url.startswith("journal:"):
        path = Path(url.removeprefix("journal:")) if url else DEFAULT_JOURNAL
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the study journal folder {path.parent}: {exc.strerror}"
            ) from None
        repair_journal_tail(path)
        return optuna.storages.JournalStorage(_CheckedJournal(str(path)))
    if url.startswith("sqlite:") and workers > 1:
        raise ConfigError(
            f"--storage {url}: SQLite is not safe for {workers} concurrent worker processes (writers lock each other "
            "out and a fresh schema can be created twice); use the default journal storage, or postgresql://"
        )
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise ConfigError(
            f"--storage {url!r}: expected sqlite:///PATH, postgresql://USER@HOST/DB, or journal:PATH (default: {DEFAULT_JOURNAL})"
        )
    interval = env_seconds("LATENTSEG_HEARTBEAT_INTERVAL_S", HEARTBEAT_INTERVAL_S)
    grace = env_seconds("LATENTSEG_HEARTBEAT_GRACE_S", GRACE_PERIOD_S)
    try:
        # Launches on several machines may meet a fresh database: one creates the schema.
        lock = (
            database_lock(url)
            if url.startswith(("postgresql", "mysql"))
            else contextlib.nullcontext()
        )
        with lock, warnings.catch_warnings():
            # the heartbeat arguments are marked experimental: a warning per launch that the
            # user can do nothing about
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=lambda study, trial: retry(study, trial, max_retry),
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite:") else None,
            )
    except Exception as exc:  # bad URL, server down, driver missing: say which
        from latentseg.tracking.store import redact

        hint = ""
        if "compatible with the table schema" in str(exc):
            hint = (
                " (is this database also an MLflow backend store? MLflow and Optuna both keep an "
                "alembic_version table: give each its own database)"
            )
        raise ConfigError(
            f"--storage {redact(url)}: cannot open the Optuna storage: {type(exc).__name__}: {exc}{hint}"
        ) from None


QUEUE_LOCK_KEY = 0x1A7E_5E6  # PostgreSQL advisory lock id of latentseg's trial queue
QUEUE_LOCK_NAME = "latentseg_trial_queue"  # MySQL named lock


@contextlib.contextmanager
def database_lock(storage_url: str):
    """A session-level lock in the storage's own database, released on exit (and by the
    server if this process dies): serialises schema creation and trial queueing between
    launches on many machines."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(storage_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            if storage_url.startswith("postgresql"):
                lock = sqlalchemy.text("SELECT pg_advisory_lock(:key)")
                unlock = sqlalchemy.text("SELECT pg_advisory_unlock(:key)")
                params = {"key": QUEUE_LOCK_KEY}
            else:
                lock = sqlalchemy.text("SELECT GET_LOCK(:name, -1)")
                unlock = sqlalchemy.text("SELECT RELEASE_LOCK(:name)")
                params = {"name": QUEUE_LOCK_NAME}
            connection.execute(lock, params)
            try:
                yield
            finally:
                connection.execute(unlock, params)
    finally:
        engine.dispose()


@contextlib.contextmanager
def queue_lock(storage_url: str | None):
    """Serialises queueing between launches that share a storage (two launches must not both
    queue the same missing grid point): a file lock beside a journal or SQLite file on this
    machine, a database lock for PostgreSQL or MySQL shared by launches on many machines."""
    if storage_url is not None and storage_url.startswith(("postgresql", "mysql")):
        with database_lock(storage_url):
            yield
        return
    import fcntl

    if storage_url is not None and storage_url.startswith("sqlite:///"):
        path = Path(storage_url.removeprefix("sqlite:///") + ".queue.lock")
    else:
        path = Path(
            storage_url.removeprefix("journal:") if storage_url else DEFAULT_JOURNAL
        ).with_suffix(".queue.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- queue


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The study's own view of its storage (RDB storages are wrapped in a cache): trials must
    be read and written through it, as Optuna's own trial queue does."""
    return study._storage


def waiting_trial_ids(storage: optuna.storages.BaseStorage, study_id: int) -> Iterator[int]:
    """The ids of the study's WAITING trials, lowest number first.

    An RDB storage (PostgreSQL, MySQL, SQLite) is asked for the ids alone, from Optuna's
    ``trials`` table: reading the waiting trials themselves loads every one with its params
    and attributes, which took 0.10-0.15 s on PostgreSQL with 1,000 trials queued, on every
    pop. A journal holds its trials in memory and is asked as Optuna asks it."""
    backend = getattr(storage, "_backend", storage)  # RDB storages come wrapped in a cache
    if isinstance(backend, optuna.storages.RDBStorage):
        import sqlalchemy

        query = sqlalchemy.text(
            "SELECT trial_id FROM trials WHERE study_id = :study_id AND state = 'WAITING' "
            "ORDER BY number"
        )
        with backend.engine.connect() as connection:
            yield from list(connection.execute(query, {"study_id": study_id}).scalars())
        return
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        yield storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)


def pop_waiting_trial(study: optuna.Study) -> tuple[optuna.Trial, int] | None:
    """Atomically take one WAITING trial (WAITING -> RUNNING): ``(trial, trial_id)``, or None
    when the queue is empty. Never creates a trial.

    The taker claims a trial before it tries to take it, and records itself as the owner once
    it has: a process killed between the two writes (SIGKILL of a launch) leaves a RUNNING
    trial with no owner, which :func:`recover_dead_trials` then knows by its claims."""
    storage = storage_of(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    me = owner_record()
    claim = claim_key(me)
    for trial_id in waiting_trial_ids(storage, study_id):
        try:
            storage.set_trial_system_attr(trial_id, claim, me)
            if not storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                storage.set_trial_system_attr(trial_id, claim, None)  # another took it
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        storage.set_trial_system_attr(trial_id, OWNER_ATTR, me)
        _cache_popped(storage, study_id, trial_id)
        return optuna.Trial(study, trial_id), trial_id
    return None


def mark_launch_stopped(
    study: optuna.Study, launch_id: str, reason: str, storage_url: str | None
) -> None:
    """Record in the study that launch ``launch_id`` was stopped, so that none of its workers
    takes another trial, wherever it runs and whether or not a signal reaches it. Under the
    queue lock of ``storage_url``: the stops of all launches share one attribute."""
    with queue_lock(storage_url):
        _set_stops(study, {**_stops(study), launch_id: reason})


def launch_stopped(study: optuna.Study, launch_id: str) -> str | None:
    """Why launch ``launch_id`` was stopped (``'SIGINT'``), or None while it runs."""
    return _stops(study).get(launch_id)


def forget_stops(study: optuna.Study, running: set[str]) -> None:
    """Drop the stops of the launches that are over (those not in ``running``, the parent run
    ids of the launches still running), so that they do not pile up across launches. The
    caller holds the queue lock."""
    stops = _stops(study)
    kept = {launch: reason for launch, reason in stops.items() if launch in running}
    if kept != stops:
        _set_stops(study, kept)


def _stops(study: optuna.Study) -> dict[str, str]:
    storage = storage_of(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    return dict(storage.get_study_system_attrs(study_id).get(STOPS_ATTR) or {})


def _set_stops(study: optuna.Study, stops: dict[str, str]) -> None:
    storage = storage_of(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    storage.set_study_system_attr(study_id, STOPS_ATTR, stops)


def claim_key(owner: dict) -> str:
    """The system attribute a process's claim on a trial is kept under (one per process, so
    that claims never overwrite each other, nor the owner)."""
    return f"{CLAIM_PREFIX}{owner['host']}:{owner['pid']}:{owner['start']}"


def trial_owners(system_attrs: dict) -> list[dict]:
    """Who may be running a RUNNING trial: its owner, or where it has none (its taker was
    killed before it wrote one), the processes whose claims on it still stand."""
    if owner := system_attrs.get(OWNER_ATTR):
        return [owner]
    return [v for k, v in system_attrs.items() if k.startswith(CLAIM_PREFIX) and v]


def _cache_popped(storage: optuna.storages.BaseStorage, study_id: int, trial_id: int) -> None:
    """Make an RDB storage's cache know the trial just popped by id: Optuna's cache must hold a
    trial before its params can be set, and it learns of new trials only by re-reading every
    unfinished one (the cost :func:`waiting_trial_ids` avoids). Where the cache is not the one
    this was written against, it is refreshed the public way, reading them all."""
    studies = getattr(storage, "_studies", None)
    add = getattr(storage, "_add_trials_to_cache", None)
    backend = getattr(storage, "_backend", None)
    if backend is None:  # a journal: its trials are all in memory
        return
    if studies is None or add is None or study_id not in studies:
        storage.get_all_trials(study_id, deepcopy=False)
        return
    frozen = backend.get_trial(trial_id)
    with storage._lock:
        add(study_id, [frozen])
        studies[study_id].unfinished_trial_ids.add(trial_id)  # re-read until it finishes


def retry(study: optuna.Study, trial: FrozenTrial, max_retry: int, count: bool = True) -> None:
    """Queue the failed trial's params again, unless ``max_retry`` retries were spent.

    Like Optuna's RetryFailedTrialCallback (same ``failed_trial`` / ``retry_history``
    system attributes), but the new attempt starts without the old one's user attributes
    (its MLflow run id, failure reason, per-seed values). ``count=False`` (an interrupted
    trial) queues it again without spending a retry."""
    history = [*trial.system_attrs.get("retry_history", [])]
    if count:
        history.append(trial.number)
        if len(history) > max_retry:
            return
    system_attrs = {
        **trial.system_attrs,
        "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
        "retry_history": history,
    }
    system_attrs.pop(OWNER_ATTR, None)
    for key in [k for k in system_attrs if k.startswith(CLAIM_PREFIX)]:
        del system_attrs[key]
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            system_attrs=system_attrs,
        )
    )


def recover_dead_trials(study: optuna.Study, max_retry: int) -> list[FrozenTrial]:
    """Fail (and retry) RUNNING trials whose process died, and those with neither owner nor
    claim that show no sign of life for the heartbeat grace (:func:`silent`); returns them."""
    storage = storage_of(study)
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():  # fail_stale_trials is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB heartbeats; the storage's callback retries
    recovered = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.number not in before
    ]
    study_id = storage.get_study_id_from_name(study.study_name)
    grace_s = env_seconds("LATENTSEG_HEARTBEAT_GRACE_S", GRACE_PERIOD_S)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owners = trial_owners(frozen.system_attrs)
        if owners and any(owner_alive(owner) for owner in owners):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        if owners:
            reason = "worker process died"
        elif silent(storage, trial_id, frozen, grace_s):
            reason = f"no owner, no claim and no sign of life for over {grace_s} s"
        else:
            continue
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process finished or failed it first
        dead = storage.get_trial(trial_id)
        retry(study, dead, max_retry)
        recovered.append(dead)
    return recovered


def silent(
    storage: optuna.storages.BaseStorage, trial_id: int, frozen: FrozenTrial, grace_s: float
) -> bool:
    """Whether the RUNNING trial shows no sign of life within ``grace_s``: it started longer
    ago, and (an RDB storage) has recorded no heartbeat since. A heartbeat that lapsed is
    Optuna's to fail (``fail_stale_trials``); this catches a trial that never beat."""
    started = frozen.datetime_start
    if started is None or datetime.datetime.now() - started <= datetime.timedelta(seconds=grace_s):
        return False
    age = heartbeat_age(storage, trial_id)
    return age is None or age > datetime.timedelta(seconds=grace_s)


def heartbeat_age(storage: optuna.storages.BaseStorage, trial_id: int) -> datetime.timedelta | None:
    """How long ago the trial recorded its last heartbeat, by the database's clock as Optuna
    judges it; None for a trial that never beat or a storage without heartbeats (a journal).
    Read from Optuna's ``trial_heartbeats`` table: Optuna has no public call for it."""
    backend = getattr(storage, "_backend", storage)  # RDB storages come wrapped in a cache
    if not isinstance(backend, optuna.storages.RDBStorage):
        return None
    import sqlalchemy

    query = sqlalchemy.text(
        "SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :trial_id"
    ).columns(heartbeat=sqlalchemy.DateTime)
    with backend.engine.connect() as connection:
        beat = connection.execute(query, {"trial_id": trial_id}).scalar()
        now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
    if beat is None:
        return None
    return now.replace(tzinfo=None) - beat.replace(tzinfo=None)


class Heartbeat:
    """Records a running trial's heartbeat for RDB storages (a no-op for journals)."""

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        self.storage = storage_of(study)
        self.trial_id = trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        get_interval = getattr(self.storage, "get_heartbeat_interval", None)
        interval = get_interval() if get_interval else None
        if interval:
            self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
            self._thread.start()
        return self

    def _beat(self, interval: float) -> None:
        while True:
            with contextlib.suppress(
                Exception
            ):  # a transient database error must not kill training
                self.storage.record_heartbeat(self.trial_id)
            if self._stop.wait(interval):
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
