"""Where a launch runs its workers: without ``--ray``, processes on this machine, the torch
threads split between them; a study with adaptive seeds is refused without a judge."""

from __future__ import annotations

import os

import pytest

from latentseg.errors import ConfigError
from latentseg.study.local_workers import LocalWorkers
from latentseg.study.pool import open_pool
from latentseg.study.runner import run_study
from latentseg.study.spec import load_study_spec

SPEC = {
    "name": "pooled",
    "search_space": {"model.num_latents": [4, 8]},
    "sampler": {"name": "grid"},
}


def test_without_ray_the_workers_are_local_processes_sharing_the_cpus(study_spec):
    loaded = load_study_spec(study_spec(SPEC))
    with open_pool(None, 2, loaded, None, None) as pool:
        assert pool == LocalWorkers(2)
        assert pool.threads == max(1, len(os.sched_getaffinity(0)) // 2)
        assert pool.describe() == {}  # the parent run's params name the workers
    assert LocalWorkers(10_000).threads == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_the_threads_split_the_cpus_this_process_may_use_not_the_machines():
    """Under ``taskset`` (or a container's cpuset) a worker gets the cores it may run on."""
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert LocalWorkers(1).threads == 1
    finally:
        os.sched_setaffinity(0, allowed)


@pytest.mark.parametrize(("asked", "share", "runs_with"), [(None, 2, 2), (1, 2, 1), (4, 2, 2)])
def test_a_trial_runs_on_the_workers_share_or_fewer_threads_where_the_experiment_sets_fewer(
    study_spec, asked, share, runs_with
):
    """``train.threads`` in the base experiment caps a worker's share: a study of one worker
    on two cores next to other work (a second study, a test suite of two processes) would
    otherwise run two spinning threads per process on cores that are not free."""
    from latentseg.study.objective import _trial_config

    loaded = load_study_spec(study_spec(SPEC, base={"train": {"threads": asked}}))
    config = _trial_config(loaded, {"model.num_latents": 8}, share)
    assert (config.train.threads, config.model.num_latents) == (runs_with, 8)


@pytest.mark.slow  # trains one tiny run: seconds
def test_a_study_run_in_this_process_leaves_its_torch_threads_as_they_were(
    study_spec, tracking_uri
):
    """A launch of one worker takes its trials in the calling process (a notebook, a test):
    its runs use the worker's share of the CPUs, and the caller's torch threads are restored
    when the study ends."""
    import torch

    from latentseg.tracking.store import connect

    spec = {**SPEC, "search_space": {"model.num_latents": [4]}}
    path = study_spec(spec, base={"train": {"threads": None, "epochs": 1}})
    before = torch.get_num_threads()
    run_study(str(path), tracking_uri=tracking_uri, progress=False)
    assert torch.get_num_threads() == before
    client = connect(tracking_uri)
    experiment = client.get_experiment_by_name("pooled").experiment_id
    (seed,) = client.search_runs([experiment], "tags.`latentseg.run_type` = 'seed'")
    assert seed.data.params["train.threads"] == str(LocalWorkers(1).threads)


def test_an_adaptive_study_without_a_judge_is_refused_before_anything_starts(study_spec, tmp_path):
    spec = {**SPEC, "seeds": {"min": 2, "max": 4, "step": 1}}
    uri = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(ConfigError, match="adaptive seeds needs a judge.*judge=latentseg.report"):
        run_study(str(study_spec(spec)), tracking_uri=uri, progress=False)
    assert not (tmp_path / "never.db").exists()


@pytest.mark.slow  # the server imports torch and MLflow once: seconds
def test_local_workers_start_from_a_server_that_imported_their_modules_once(tmp_path):
    """Worker processes are forked from multiprocessing's forkserver with the worker's
    modules preloaded: a worker finds torch, MLflow's database store and the worker loop
    imported already (a spawned worker imports them again, seconds each round). The server
    ends with the launch's pool, reaped: its workers' CPU time counts as this process's
    children's, as a spawned worker's does (the benchmarks' CPU figures)."""
    import json
    import multiprocessing
    import resource

    from latentseg.study.local_workers import WORKER_MODULES, local_pool, worker_context
    from tests.helpers_study import modules_at_start

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("SKIPPED LOUDLY: this platform has no forkserver; workers are spawned")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with local_pool(2):
        context = worker_context()
        assert context.get_start_method() == "forkserver"
        for i in range(2):  # the second worker comes from the same server
            out = tmp_path / f"modules-{i}.json"
            process = context.Process(target=modules_at_start, args=(str(out), WORKER_MODULES))
            process.start()
            process.join(120)
            assert process.exitcode == 0
            found = json.loads(out.read_text())
            assert found["preloaded"] == dict.fromkeys(WORKER_MODULES, True)
            assert found["parent"] != os.getpid()  # forked from the server, not this process
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    children_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert children_cpu >= 2 * 0.3  # each worker's busy 0.3 s, and the server's imports
