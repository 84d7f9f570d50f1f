"""How long a study's worker process takes to start: spawned (a fresh interpreter imports
torch, MLflow and the training code) against forked from the server that imported them once
(``latentseg.study.local_workers.worker_context``, what ``--workers W`` uses), side by side
in one run on this machine.

    .venv/bin/python benchmarks/worker_start.py [--workers 2] [--rounds 3]

Each round starts ``--workers`` processes at once, as a launch (or a round of adaptive
seeds) does, and waits until each has imported what a worker imports before its first
trial. Prints, per start method, the wall seconds of each round and the CPU seconds of all
of them (this process's children), and the ratios. ``--json PATH`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
from pathlib import Path

from latentseg.bench.harness import stopwatch
from latentseg.bench.machine import cpu_isa
from latentseg.study.local_workers import WORKER_MODULES, stop_worker_server, worker_context


def ready(modules: list[str]) -> None:
    """A worker's start: import what a worker imports before its first trial."""
    import importlib

    for name in modules:
        importlib.import_module(name)


def rounds_of(context, workers: int, rounds: int) -> dict:
    walls = []
    with stopwatch() as total:
        for _ in range(rounds):
            with stopwatch() as one:
                processes = [
                    context.Process(target=ready, args=(WORKER_MODULES,)) for _ in range(workers)
                ]
                for process in processes:
                    process.start()
                for process in processes:
                    process.join()
                    if process.exitcode != 0:
                        raise SystemExit(f"a worker ended with {process.exitcode}")
            walls.append(one.wall_s)
        stop_worker_server()  # reaped: its CPU counts here
    return {"round_wall_s": walls, "cpu_s": total.cpu_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {
        "spawn": rounds_of(multiprocessing.get_context("spawn"), args.workers, args.rounds),
        "forkserver": rounds_of(worker_context(), args.workers, args.rounds),
    }
    print(f"worker start, {args.workers} workers x {args.rounds} rounds ({cpu_isa()}):")
    for method, r in results.items():
        walls = ", ".join(f"{w:.2f}" for w in r["round_wall_s"])
        print(f"  {method:<10} rounds {walls} s wall; {r['cpu_s']:.1f} CPU s in all")
    spawn, fork = results["spawn"], results["forkserver"]
    later = statistics.mean(fork["round_wall_s"][1:] or fork["round_wall_s"])
    print(
        f"  forkserver/spawn: CPU x{fork['cpu_s'] / spawn['cpu_s']:.2f}; first round wall "
        f"x{fork['round_wall_s'][0] / spawn['round_wall_s'][0]:.2f}, later rounds wall "
        f"x{later / statistics.mean(spawn['round_wall_s'][1:] or spawn['round_wall_s']):.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps({"isa": cpu_isa(), **results}, indent=2))


if __name__ == "__main__":
    main()
