"""Importing latentseg (and using it as a library) leaves the host process as it was: its
environment, allocator, matplotlib backend, Optuna's log level and working directory. The
command line opts in to its tuning with ``latentseg.tune_process``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import subprocess_env

PROBE = """
import json, os, sys
import matplotlib, optuna, torch
optuna.logging.set_verbosity(optuna.logging.INFO)
env, cwd = dict(os.environ), os.getcwd()
import latentseg, latentseg.plots, latentseg.report, latentseg.report.plots, latentseg.study
import latentseg.bench, latentseg.tracking, latentseg.cli
from latentseg.train import fastpath
model = fastpath.prepare_model(latentseg.create_model("tutorial"), torch.device("cpu"))
after = {
    "env_changed": sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)),
    "backend": matplotlib.get_backend(),
    "optuna": optuna.logging.get_verbosity(),
    "cwd_same": os.getcwd() == cwd,
    "malloc_tuned": fastpath._malloc_tuned,
}
after["tuned"] = latentseg.tune_process()
after["thp"] = os.environ.get("THP_MEM_ALLOC_ENABLE")
print(json.dumps(after))
"""


def test_importing_and_using_latentseg_changes_nothing_until_tune_process_is_called():
    env = subprocess_env()
    env["MPLBACKEND"] = "svg"  # a user's own choice, e.g. a notebook's
    for key in ("THP_MEM_ALLOC_ENABLE", "LATENTSEG_MALLOC_TUNING"):
        env.pop(key, None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    after = json.loads(done.stdout.strip().splitlines()[-1])
    assert after["env_changed"] == []
    assert after["backend"] == "svg"
    assert after["optuna"] == 20  # INFO, as the host set it
    assert after["cwd_same"] and after["malloc_tuned"] is None  # prepare_model tunes nothing
    assert after["tuned"] == {"huge_pages": True, "keep_freed_memory": True}  # on glibc
    assert after["thp"] == "1"


def test_the_report_and_the_tracking_package_load_without_torch():
    """`latentseg report` and code that only reads the store (``latentseg.tracking``'s
    names) start without importing torch and the training loop: seconds of CPU per process.
    The training names still load on first use."""
    probe = (
        "import sys, latentseg.cli.report, latentseg.report.collect, latentseg.report.render\n"
        "from latentseg.tracking import connect, TrackingStore\n"
        "before = 'torch' in sys.modules\n"
        "from latentseg.tracking import run_experiment, load_model\n"
        "print(before, 'torch' in sys.modules, callable(run_experiment))\n"
    )
    assert run_probe(probe).split() == ["False", "True", "True"]


def test_a_ray_workers_task_loads_without_torch(study_spec, tmp_path):
    """What Ray unpickles in a Ray worker (the task's function, the stop flag's class, and a
    real trial context) imports neither torch nor Optuna nor MLflow: only the worker process
    the task starts trains. The study package's names still load on first use."""
    import pickle

    from latentseg.study import ray_task
    from latentseg.study.context import TrialContext
    from latentseg.study.spec import load_study_spec

    loaded = load_study_spec(study_spec({"name": "r", "search_space": {"optim.lr": [0.1, 0.2]}}))
    context = TrialContext(loaded, "http://127.0.0.1:5000", "1", "run", threads=1)
    sent = tmp_path / "sent.pkl"
    sent.write_bytes(pickle.dumps((ray_task.ray_worker, ray_task.StopFlag, context)))
    probe = (
        "import pickle, sys\n"
        f"task, flag, context = pickle.loads(open({str(sent)!r}, 'rb').read())\n"
        "print(sorted(m for m in ('torch', 'optuna', 'mlflow') if m in sys.modules))\n"
        "print(type(context).__name__, context.study.name)\n"
        "from latentseg.study import run_study\n"
        "print('torch' in sys.modules, callable(run_study))\n"
    )
    assert run_probe(probe).splitlines() == ["[]", "TrialContext r", "True True"]


def run_probe(code: str) -> str:
    """What ``code`` prints, run in a fresh interpreter (imports start from nothing)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_lazy_name_is_imported_once_on_first_use_and_an_unknown_one_is_an_attribute_error():
    import types

    from latentseg.lazy import lazy_getattr

    package = types.ModuleType("pkg")
    package.__getattr__ = lazy_getattr("pkg", {"dumps": "json"}, vars(package))
    assert "dumps" not in vars(package)
    assert package.dumps is json.dumps and vars(package)["dumps"] is json.dumps  # kept
    with pytest.raises(AttributeError, match=r"^module 'pkg' has no attribute 'loads'$"):
        getattr(package, "loads")  # noqa: B009 (not exported)
