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
        assert pool.threads == max(1, (os.cpu_count() or 1) // 2)
        assert pool.describe() == {}  # the parent run's params name the workers
    assert LocalWorkers(10_000).threads == 1


def test_an_adaptive_study_without_a_judge_is_refused_before_anything_starts(study_spec, tmp_path):
    spec = {**SPEC, "seeds": {"min": 2, "max": 4, "step": 1}}
    uri = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(ConfigError, match="adaptive seeds needs a judge.*judge=latentseg.report"):
        run_study(str(study_spec(spec)), tracking_uri=uri, progress=False)
    assert not (tmp_path / "never.db").exists()
