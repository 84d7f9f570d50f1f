"""A study's workers on Ray against the same workers started locally, and what a fault costs.

    .venv/bin/python benchmarks/ray_scaleout.py [--epochs 3] [--repeats 2] [--faults] [--json PATH]

The study is the grid of the Ray tests: model.num_latents 2 or 4, expert attention on or off,
2 seeds per point (8 training runs), on the digits scenes at 32x32 (1,024 training images).

grid: the study launched with ``--workers 2`` and with ``--workers 2 --ray`` (a local Ray
started for the launch), alternated ``--repeats`` times, each launch in a fresh temporary store
(journal and SQLite). Prints each launch's wall seconds, the medians and their ratio.

--faults: a Ray cluster of two nodes on this machine (a head and a second node on loopback
addresses, one CPU each; the rig of ``tests/study/test_ray.py``, from ``tests/helpers_ray.py``),
a PostgreSQL database on 127.0.0.1:5432 and a ``latentseg server``. The study runs clean, with
one worker process killed mid-trial (SIGKILL), and with the second node stopped mid-trial. For
each: its wall seconds and the extra over the clean launch, the trials failed and run again,
and the epochs trained more than the clean study's (the retried work). Heartbeats are latentseg's defaults
(every 20 s, 60 s of grace), as a user gets them; both nodes are processes of this machine,
so a dead attempt's process is seen gone at once (across machines, after the grace).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the Ray test rig (tests/helpers_ray.py) for --faults

from latentseg.bench.harness import stopwatch  # noqa: E402
from latentseg.bench.machine import cpu_isa  # noqa: E402

GRID = {"model.num_latents": [2, 4], "model.expert_attention": [True, False]}
SEEDS = 2


def write_spec(folder: Path, name: str, epochs: int) -> Path:
    spec = {
        "experiment": str(ROOT / "experiments" / "digits.yaml"),
        "overrides": {
            "data.params.image_size": 32, "data.train_size": 1024, "data.val_size": 256,
            "data.test_size": 256, "train.epochs": epochs, "tracking.log_model": False,
            "tracking.attention_plots": False,
        },
        "search_space": GRID, "sampler": {"name": "grid"}, "seeds": SEEDS, "max_retry": 1,
    }  # fmt: skip
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **spec}))
    return path


def study_command(spec: Path, storage: str, tracking: str, ray: str | None) -> list[str]:
    command = [sys.executable, "-m", "latentseg.cli", "study", str(spec), "--workers", "2",
               "--storage", storage, "--tracking-uri", tracking, "--no-progress"]  # fmt: skip
    return command + (["--ray", ray] if ray else [])


def run_to_end(command: list[str], cwd: Path, env: dict | None = None) -> float:
    with stopwatch() as elapsed:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"latentseg study failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed.wall_s


def local_against_ray(epochs: int, repeats: int) -> dict:
    """Wall seconds of the grid with 2 local workers and with 2 Ray workers, alternated."""
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    for _ in range(repeats):
        for kind in walls:
            with tempfile.TemporaryDirectory() as name:
                folder = Path(name)
                spec = write_spec(folder, "scaleout", epochs)
                command = study_command(
                    spec, f"journal:{folder / 'journal.log'}", f"sqlite:///{folder / 'mlflow.db'}",
                    "local" if kind == "ray" else None,
                )  # fmt: skip
                walls[kind].append(run_to_end(command, folder))
                print(f"  {kind}: {walls[kind][-1]:.1f} s", flush=True)
    medians = {kind: statistics.median(values) for kind, values in walls.items()}
    return {
        "walls_s": walls,
        "medians_s": medians,
        "ray_over_local": medians["ray"] / medians["local"],
    }


def retried_work(name: str, storage: str, tracking: str, epochs: int) -> dict:
    """What the study trained beyond the clean grid, from Optuna's and MLflow's records."""
    import optuna
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    trials = optuna.load_study(study_name=name, storage=storage).trials
    client = MlflowClient(tracking)
    experiment_id = client.get_experiment_by_name(name).experiment_id
    seed_runs = client.search_runs(
        [experiment_id], "tags.`latentseg.run_type` = 'seed'", max_results=1000
    )
    trained = sum(len(client.get_metric_history(run.info.run_id, "val_miou")) for run in seed_runs)
    clean = len(GRID["model.num_latents"]) * len(GRID["model.expert_attention"]) * SEEDS * epochs
    return {
        "trials_failed": sum(t.state == TrialState.FAIL for t in trials),
        "seed_runs": len(seed_runs),
        "epochs_trained": trained,
        "epochs_retried": trained - clean,
    }


def faults(epochs: int) -> dict:
    """The grid clean, with a worker killed and with the second node stopped, on two nodes."""
    from tests import helpers_ray as rig
    from tests.conftest import _postgres_url
    from tests.helpers_processes import free_port, start_server, stop_server, wait_healthy

    base, reason = _postgres_url()
    if base is None:
        sys.exit(f"--faults needs PostgreSQL on 127.0.0.1:5432: {reason}")
    import psycopg

    databases: list[str] = []

    def database(name: str) -> str:
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as admin:  # fmt: skip
            admin.execute(f'CREATE DATABASE "{name}"')
        databases.append(name)
        return base + name

    results: dict[str, dict] = {}
    port = free_port()
    head = second = server = None
    folder = Path(tempfile.mkdtemp(prefix="lsbench-"))
    tag = os.urandom(4).hex()
    try:
        head, second = rig.start_cluster(port)
        server_port = free_port()
        tracking = f"http://127.0.0.1:{server_port}"
        server = start_server(database(f"lsbench_mlflow_{tag}"), folder / "served", server_port, folder)  # fmt: skip
        wait_healthy(tracking, server)
        for case in ("clean", "killed worker", "stopped node"):
            name = f"ray{case.split()[0]}"
            storage = database(f"lsbench_{name}_{tag}")
            spec = write_spec(folder, name, epochs)
            command = study_command(spec, storage, tracking, f"{rig.HEAD_IP}:{port}")
            with stopwatch() as elapsed:
                study = subprocess.Popen(command, cwd=folder, env=rig.ray_env(),
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
                if case == "killed worker":
                    owner = rig.wait_for_running_trial(study, name, storage, tracking)
                    os.kill(int(owner["pid"]), signal.SIGKILL)
                elif case == "stopped node":
                    rig.wait_for_running_trial(study, name, storage, tracking,
                                               lambda owner: owner["pid"] in second.pids())  # fmt: skip
                    second.stop()
                output = study.communicate()[0]
            if study.returncode != 0:
                sys.exit(f"{case}: latentseg study failed ({study.returncode}):\n{output[-3000:]}")
            results[case] = {
                "wall_s": elapsed.wall_s,
                **retried_work(name, storage, tracking, epochs),
            }
            results[case]["extra_wall_s"] = elapsed.wall_s - results["clean"]["wall_s"]
            print(f"  {case}: {elapsed.wall_s:.1f} s", flush=True)
    finally:
        if server is not None:
            stop_server(server)
        for node in (second, head):
            if node is not None:
                node.cleanup()
        with (
            contextlib.suppress(Exception),
            psycopg.connect(
                host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
            ) as admin,
        ):
            for name in databases:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="launches of each kind (grid)")
    parser.add_argument("--faults", action="store_true", help="also the two-node fault costs")
    parser.add_argument("--no-grid", action="store_true", help="skip local against Ray")
    parser.add_argument("--json", type=Path, help="also write the figures there")
    args = parser.parse_args()

    figures: dict = {"cpu": cpu_isa(), "cores": os.cpu_count(), "epochs": args.epochs}
    print(
        f"2x2 grid, {SEEDS} seeds, {args.epochs} epochs; {figures['cpu']}, {figures['cores']} cores"
    )
    if not args.no_grid:
        grid = figures["grid"] = local_against_ray(args.epochs, args.repeats)
        medians = grid["medians_s"]
        print(f"grid: 2 local workers {medians['local']:.1f} s, 2 Ray workers (local Ray) "
              f"{medians['ray']:.1f} s: {grid['ray_over_local']:.2f}x the local time "
              f"(+{medians['ray'] - medians['local']:.1f} s)")  # fmt: skip
    if args.faults:
        cases = figures["faults"] = faults(args.epochs)
        for case, row in cases.items():
            print(f"{case}: {row['wall_s']:.1f} s (+{row['extra_wall_s']:.1f} s), "
                  f"{row['trials_failed']} trial(s) failed and run again, "
                  f"{row['epochs_retried']} epoch(s) retried of {row['epochs_trained']} trained")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
