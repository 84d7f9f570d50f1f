"""latentseg's contracts with Optuna's, MLflow's and torch's internals: one test per private
attribute, function, table or file name the package uses, each asserting that it exists and
behaves as the code relies on, against real Optuna storages (a journal file, SQLite) and a
real MLflow SQLite store. An upgrade that moves one fails here, not in a study;
pyproject.toml bounds Optuna and MLflow to the majors these pass on. The last test scans the
package, so that a private name or table used anew gets its contract here.

Who relies on what: ``latentseg/study/storage.py`` (``study._storage``, the RDB cache's
``_backend``, ``_studies``, ``_add_trials_to_cache`` and ``_lock``, SQL on Optuna's
``trials`` and ``trial_heartbeats`` tables, ``JournalFileBackend._file_path`` and
``read_logs``, the journal lock's file name); ``latentseg/tracking/store.py``
(``SqlAlchemyStore._engine_map``, ``_initialize_tables``, ``_verify_schema``,
``_get_latest_schema_revision``, ``_use_tracking_uri``, SQL on MLflow's ``alembic_version``
and ``runs``); ``latentseg/train/fastpath.py``
(``torch.ops.mkldnn._is_mkldnn_bf16_supported``); ``latentseg/study/local_workers.py``
(the standard library's ``multiprocessing.forkserver._forkserver._stop``)."""

from __future__ import annotations

import ast
import contextlib
import datetime
import inspect
import re
import sqlite3
import threading

import optuna
import pytest
import sqlalchemy
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import TrialState

from latentseg.errors import ConfigError
from latentseg.study.journal import _CheckedJournal
from latentseg.study.storage import (
    _cache_popped,
    make_storage,
    pop_waiting_trial,
    storage_of,
    waiting_trial_ids,
)
from tests.conftest import ROOT

# ----------------------------------------------------------------------------- Optuna


def queued_study(storage) -> optuna.Study:
    """A study with trials 0-2 WAITING (queued out of order of their params) and trial 3
    finished, as a launch leaves its queue."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="contract", storage=storage)
    for x in (2.0, 0.0, 1.0):
        study.enqueue_trial({"x": x})
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.5}, distributions={"x": optuna.distributions.FloatDistribution(0, 10)},
            value=0.5,
        )
    )  # fmt: skip
    return study


@pytest.fixture
def rdb(tmp_path) -> RDBStorage:
    """A SQLite RDB storage as ``make_storage`` opens it (heartbeat and all)."""
    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}", max_retry=0)
    assert isinstance(storage, RDBStorage)
    return storage


@pytest.fixture
def journal(tmp_path) -> JournalStorage:
    storage = make_storage(f"journal:{tmp_path / 'journal.log'}", max_retry=0)
    assert isinstance(storage, JournalStorage)
    return storage


def waiting_ids_the_public_way(study: optuna.Study) -> list[int]:
    storage = storage_of(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    numbers = sorted(t.number for t in trials)
    return [storage.get_trial_id_from_study_id_trial_number(study_id, n) for n in numbers]


def test_study_storage_is_the_storage_the_study_reads_and_writes_through(journal, rdb):
    """``study._storage`` (storage_of): the storage itself for a journal, and for an RDB
    storage the study's own cache in front of it, which sees what is written through it."""
    journaled = queued_study(journal)
    assert journaled._storage is journal
    cached_study = queued_study(rdb)
    cache = cached_study._storage
    assert isinstance(cache, optuna.storages.BaseStorage) and cache is not rdb
    assert storage_of(cached_study) is cache
    for study in (journaled, cached_study):
        storage = storage_of(study)
        trial_id = waiting_ids_the_public_way(study)[0]
        assert storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
        assert study.get_trials(deepcopy=False)[0].state == TrialState.RUNNING
        assert storage.get_trial(trial_id).number == 0


def test_an_rdb_storages_cache_keeps_it_as_its_backend_and_a_journal_has_none_that_is(journal, rdb):
    """The RDB cache's ``_backend`` is the RDBStorage (waiting_trial_ids asks its engine, and
    _cache_popped reads the popped trial from it); a journal's ``_backend``, where it has
    one, is its log, not an RDBStorage: that is how the two are told apart."""
    cache = queued_study(rdb)._storage
    assert cache._backend is rdb
    assert isinstance(cache._backend.engine, sqlalchemy.engine.Engine)
    assert not isinstance(getattr(journal, "_backend", journal), RDBStorage)


def test_the_trials_table_holds_trial_and_study_ids_numbers_and_states_by_name(rdb):
    """waiting_trial_ids's SQL: ``SELECT trial_id FROM trials WHERE study_id = ... AND state =
    'WAITING' ORDER BY number`` gives the WAITING trials' ids, lowest number first."""
    study = queued_study(rdb)
    columns = {c["name"] for c in sqlalchemy.inspect(rdb.engine).get_columns("trials")}
    assert {"trial_id", "study_id", "number", "state"} <= columns
    study_id = storage_of(study).get_study_id_from_name("contract")
    with rdb.engine.connect() as connection:
        states = connection.execute(sqlalchemy.text("SELECT DISTINCT state FROM trials"))
        assert set(states.scalars()) == {"WAITING", "COMPLETE"}
    got = list(waiting_trial_ids(storage_of(study), study_id))
    assert got == waiting_ids_the_public_way(study) and len(got) == 3


def test_the_trial_heartbeats_table_holds_each_trials_last_heartbeat(rdb):
    """``SELECT heartbeat FROM trial_heartbeats WHERE trial_id = ...``: the time of the trial's
    last heartbeat (record_heartbeat), one row a trial, none before its first."""
    study = queued_study(rdb)
    trial_id = waiting_ids_the_public_way(study)[0]
    query = sqlalchemy.text("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :trial_id")
    with rdb.engine.connect() as connection:
        assert connection.execute(query, {"trial_id": trial_id}).all() == []
    rdb.record_heartbeat(trial_id)
    rdb.record_heartbeat(trial_id)
    with rdb.engine.connect() as connection:
        (beat,) = connection.execute(
            query.columns(heartbeat=sqlalchemy.DateTime), {"trial_id": trial_id}
        ).one()
    assert isinstance(beat, datetime.datetime)


def test_the_caches_studies_map_study_ids_to_their_trials_and_unfinished_trial_ids(rdb):
    """``_studies[study_id]`` has ``trials`` (number -> FrozenTrial) and
    ``unfinished_trial_ids`` (a set of trial ids that the cache reads again until they
    finish): _cache_popped adds a popped trial to both."""
    study = queued_study(rdb)
    cache = study._storage
    study_id = cache.get_study_id_from_name("contract")
    study.get_trials()  # the cache reads the study's trials
    info = cache._studies[study_id]
    assert isinstance(info.unfinished_trial_ids, set)
    assert info.unfinished_trial_ids == set(waiting_ids_the_public_way(study))
    assert sorted(info.trials) == [0, 1, 2, 3]


def test_add_trials_to_cache_takes_frozen_trials_and_leaves_the_lock_to_its_caller(rdb):
    """``_add_trials_to_cache(study_id, trials)`` caches trials by id and number without
    taking ``_lock`` itself: _cache_popped calls it holding that lock (a lock taken twice
    would hang the worker)."""
    study = queued_study(rdb)
    cache = study._storage
    study_id = cache.get_study_id_from_name("contract")
    study.get_trials()
    assert list(inspect.signature(cache._add_trials_to_cache).parameters) == [
        "study_id",
        "trials",
    ]
    late = rdb.create_new_trial(study_id)  # written past the cache, as another launch would
    frozen = rdb.get_trial(late)
    done = threading.Event()

    def add_under_the_lock():
        with cache._lock:
            cache._add_trials_to_cache(study_id, [frozen])
        done.set()

    worker = threading.Thread(target=add_under_the_lock, daemon=True)
    worker.start()
    assert done.wait(timeout=30), "_add_trials_to_cache waits for the lock its caller holds"
    assert cache._studies[study_id].trials[frozen.number] is frozen
    assert cache.get_trial_id_from_study_id_trial_number(study_id, frozen.number) == late


def test_the_caches_lock_is_the_one_its_reads_take(rdb):
    """``_lock``: held, it keeps the cache's own reads out (what _cache_popped writes under
    it is never seen half done)."""
    study = queued_study(rdb)
    cache = study._storage
    study_id = cache.get_study_id_from_name("contract")
    started, read = threading.Event(), threading.Event()

    def reader():
        started.set()
        cache.get_all_trials(study_id, deepcopy=False)
        read.set()

    with cache._lock:
        worker = threading.Thread(target=reader, daemon=True)
        worker.start()
        assert started.wait(timeout=30)
        assert not read.wait(timeout=0.2)  # blocked on the lock (a slow read also waits)
    assert read.wait(timeout=30)


def test_a_trial_popped_by_id_is_known_to_the_cache_and_takes_its_params(rdb):
    """The three cache internals together, as pop_waiting_trial uses them: the trial popped
    past the cache is in it, unfinished, and its queued params are set through it."""
    study = queued_study(rdb)
    study.get_trials()  # the cache has read the queue before the pop, as a worker's has
    cache = study._storage
    study_id = cache.get_study_id_from_name("contract")
    trial, trial_id = pop_waiting_trial(study)
    assert trial_id in cache._studies[study_id].unfinished_trial_ids
    assert trial.suggest_float("x", 0, 10) == 2.0  # trial 0's queued params
    _cache_popped(cache, study_id, trial_id)  # again: idempotent
    study.tell(trial, 1.0)
    assert study.get_trials(deepcopy=False)[0].state == TrialState.COMPLETE


def test_the_journal_files_path_and_its_reader_are_as_checked_journal_extends_them(tmp_path):
    """_CheckedJournal names the file by ``_file_path`` and counts the lines ``read_logs
    (log_number_from)`` yields before a damaged line, where Optuna raises a ValueError."""
    path = tmp_path / "journal.log"
    path.write_text('{"op_code": 0}\n{"op_code": \n{"op_code": 1}\n')
    backend = JournalFileBackend(str(path))
    assert backend._file_path == str(path)
    signature = inspect.signature(JournalFileBackend.read_logs)
    assert list(signature.parameters) == ["self", "log_number_from"]
    logs = backend.read_logs(0)
    assert next(logs) == {"op_code": 0}
    with pytest.raises(ValueError):
        next(logs)
    with pytest.raises(ConfigError, match=r"journal.log: line 2 is damaged"):
        list(_CheckedJournal(str(path)).read_logs(0))


def test_the_journal_lock_is_a_file_beside_the_journal_while_it_is_held(tmp_path):
    """repair_journal_tail never touches a journal whose ``<journal>.lock`` exists: that is
    where JournalFileSymlinkLock keeps its lock while a writer holds it."""
    path = tmp_path / "journal.log"
    path.touch()
    lock = JournalFileSymlinkLock(str(path))
    assert lock.acquire()
    try:
        assert (tmp_path / "journal.log.lock").is_symlink()
    finally:
        lock.release()
    assert not (tmp_path / "journal.log.lock").exists()


# ----------------------------------------------------------------------------- MLflow


def test_the_sqlalchemy_stores_engines_are_kept_by_uri_in_a_class_map(tracking_uri):
    """``SqlAlchemyStore._engine_map``: a class-wide dict from the store's URI to its engine,
    from which _forget_engine drops the engine of a store that failed to open."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from latentseg.tracking.store import _forget_engine, open_client

    assert isinstance(SqlAlchemyStore._engine_map, dict)
    open_client(tracking_uri)
    engine = SqlAlchemyStore._engine_map[tracking_uri]
    assert isinstance(engine, sqlalchemy.engine.Engine)
    _forget_engine(tracking_uri)
    assert tracking_uri not in SqlAlchemyStore._engine_map


def test_initialize_tables_builds_the_schema_that_verify_schema_accepts(tmp_path, _empty_store):
    """``_initialize_tables(engine)`` creates MLflow's whole schema (``runs`` and all) at its
    newest revision, and ``_verify_schema(engine)`` raises for any other: _create_sqlite_store
    builds a new store with the one and checks it with the other (``_empty_store`` is a store
    it built, once per test process)."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.db.utils import (
        _initialize_tables,
        _verify_schema,
        create_sqlalchemy_engine_with_retry,
    )

    for function in (_initialize_tables, _verify_schema):
        assert list(inspect.signature(function).parameters) == ["engine"]
    empty = create_sqlalchemy_engine_with_retry(f"sqlite:///{tmp_path / 'empty.db'}")
    built = create_sqlalchemy_engine_with_retry(f"sqlite:///{_empty_store}")
    try:
        with pytest.raises(MlflowException):
            _verify_schema(empty)
        _verify_schema(built)
        tables = set(sqlalchemy.inspect(built).get_table_names())
    finally:
        empty.dispose()
        built.dispose()
    assert {"experiments", "runs", "metrics", "params", "tags", "alembic_version"} <= tables


def test_the_latest_schema_revision_is_the_one_a_new_store_records(_empty_store):
    """``_get_latest_schema_revision()``: the alembic revision of a whole store, as _half_made
    compares it with a store's ``alembic_version`` (and counts its ``runs``) to tell a
    cut-off upgrade."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    from latentseg.tracking.store import _half_made

    assert not inspect.signature(_get_latest_schema_revision).parameters
    head = _get_latest_schema_revision()
    with contextlib.closing(sqlite3.connect(_empty_store)) as connection:
        (version,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        (runs,) = connection.execute("SELECT COUNT(*) FROM runs").fetchone()
    assert isinstance(head, str) and version == head and runs == 0
    assert _half_made(_empty_store) is None


def test_use_tracking_uri_sets_the_process_uri_for_its_block_and_restores_it(tmp_path):
    """``_use_tracking_uri(uri)``: a context manager under which MLflow's process-wide URI is
    ``uri``, restored after, even when the block raises (Store.mlflow_frame)."""
    import mlflow
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    before = f"sqlite:///{tmp_path / 'before.db'}"
    inside = f"sqlite:///{tmp_path / 'inside.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(before)
    try:
        with _use_tracking_uri(inside):
            assert mlflow.get_tracking_uri() == inside
        assert mlflow.get_tracking_uri() == before
        with pytest.raises(KeyError), _use_tracking_uri(inside):
            raise KeyError
        assert mlflow.get_tracking_uri() == before
    finally:
        mlflow.set_tracking_uri(previous)


# ----------------------------------------------------------------------------- torch


def test_mkldnns_bf16_check_answers_with_a_bool():
    """``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` (fastpath.bf16_supported, which
    takes its absence for "no bf16" and would then refuse bf16 runs on a CPU that has it)."""
    import torch

    assert isinstance(torch.ops.mkldnn._is_mkldnn_bf16_supported(), bool)


def test_the_forkservers_stop_ends_the_server_reaps_it_and_the_next_process_starts_another():
    """``multiprocessing.forkserver._forkserver._stop()`` (local_workers.stop_worker_server,
    at the end of each launch): it closes the server's "alive" pipe and waits for the server,
    so the server is reaped by this process; the next forkserver process starts a new one."""
    import multiprocessing
    import os
    from multiprocessing import forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("SKIPPED LOUDLY: this platform has no forkserver")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([])
    pids = []
    for _ in range(2):
        process = context.Process(target=os.getpid)
        process.start()
        process.join(60)
        assert process.exitcode == 0
        pids.append(forkserver._forkserver._forkserver_pid)
        forkserver._forkserver._stop()
        assert forkserver._forkserver._forkserver_pid is None
        with pytest.raises(ChildProcessError):
            os.waitpid(pids[-1], os.WNOHANG)  # reaped already
    assert pids[0] != pids[1]
    forkserver._forkserver._stop()  # none running: nothing to do


COVERED = {  # the private names the tests above hold to their contracts
    "_storage", "_backend", "_studies", "_add_trials_to_cache", "_lock", "_file_path",
    "_engine_map", "_initialize_tables", "_verify_schema", "_get_latest_schema_revision",
    "_use_tracking_uri", "_tracking_service", "_is_mkldnn_bf16_supported", "_forkserver",
    "_stop",
}  # fmt: skip
STANDARD_LIBRARY = {"_exit", "_SubParsersAction", "_replace"}  # os, argparse, namedtuple
# the tables of Optuna's and MLflow's schemas that the package's own SQL reads
COVERED_TABLES = {"trials", "trial_heartbeats", "alembic_version", "runs"}
SQL_TABLE = re.compile(r"\b(?:FROM|JOIN|UPDATE|INTO)\s+([A-Za-z_][A-Za-z0-9_]*)")


def private_names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """The private names a module reads (``x._name``, ``getattr(x,
    "_name")``, and the private parts of what it imports from optuna, mlflow and torch),
    and those it defines (functions, classes, assigned names and attributes)."""
    used, defined = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
            else:  # on self too: a subclass reads its base's attributes (_CheckedJournal)
                used.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in ("optuna", "mlflow", "torch"):
                used |= {*node.module.split("."), *(alias.name for alias in node.names)}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr":
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                used.add(str(node.args[1].value))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
    private = {name for name in used | defined if name.startswith("_") and name[1:2] != "_"}
    return used & private, defined & private


def test_every_private_name_of_a_dependency_the_package_uses_has_its_contract():
    """A private name that latentseg/ reads and does not define itself is a dependency's: it
    gets its test here before it is used. A test here for a name no longer used goes."""
    used, defined = set(), set()
    for path in (ROOT / "latentseg").rglob("*.py"):
        module_used, module_defined = private_names(ast.parse(path.read_text(encoding="utf-8")))
        used |= module_used
        defined |= module_defined
    tables = set()
    for path in (ROOT / "latentseg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                tables |= set(SQL_TABLE.findall(node.value))
    tables -= {"sqlite_master"}  # SQLite's own catalog
    assert tables <= COVERED_TABLES, (
        f"no contract test for tables {sorted(tables - COVERED_TABLES)}"
    )
    foreign = used - defined - STANDARD_LIBRARY
    assert foreign <= COVERED, f"no contract test for {sorted(foreign - COVERED)}"
    assert used >= COVERED, f"contracts for names no longer used: {sorted(COVERED - used)}"
