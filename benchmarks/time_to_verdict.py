"""Time to a verdict: the same ablation grid with fixed seeds and with adaptive seeds, run
one after the other on this machine.

    .venv/bin/python benchmarks/time_to_verdict.py [--spec studies/quick.yaml] [--workers 2]

The spec must use adaptive seeds (``seeds: {min, max, step}``). The fixed design runs every
point with ``max`` seeds, decided once at alpha: the design whose power adaptive seeds
approach (the calibration tests measure how close, ``tests/report/test_calibration.py``).
Each study runs as its own ``latentseg study`` process in a fresh temporary store; the CPU
seconds are those of that process and its workers. Prints, for each design: CPU seconds,
wall seconds, seed runs, the verdicts and how many of them agree between the two designs.
``--json PATH`` also writes the figures there; ``--keep DIR`` keeps both stores there (one
folder per design: ``mlflow.db``, ``journal.log``, the artifacts), so that
``latentseg report --study ttv-fixed --tracking-uri sqlite:///DIR/fixed/mlflow.db`` reads
them again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from latentseg.bench.harness import stopwatch
from latentseg.bench.machine import cpu_isa


def run(spec: Path, name: str, workers: int, folder: Path) -> dict:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    command = [str(Path(sys.executable).parent / "latentseg"), "study", str(spec), "--workers", str(workers),
               "--tracking-uri", uri, "--storage", f"journal:{folder / 'journal.log'}", "--no-progress"]  # fmt: skip
    with stopwatch() as study:  # its CPU: the study's processes (this one only waits)
        done = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    if done.returncode != 0:
        sys.exit(f"{name}: latentseg study failed ({done.returncode}):\n{done.stderr[-3000:]}")
    from latentseg.report import ablation_report

    report = ablation_report(study=name, tracking_uri=uri, figures=False)
    summary = report.summary[report.summary["verdict"] != "baseline"]
    keys = report.axes
    verdicts = {
        ", ".join(f"{k}={row[k]}" for k in keys): str(row["verdict"])
        for _, row in summary.iterrows()
    }
    for _, row in report.effects.iterrows():
        verdicts[f"main effect {row['axis']} {row['value']} vs {row['baseline_value']} ({row['scope']})"] = str(row["verdict"])  # fmt: skip
    return {
        "cpu_s": study.cpu_s,
        "wall_s": study.wall_s,
        "seed_runs": int(report.summary["n"].sum()),
        "verdicts": verdicts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--spec", default="studies/quick.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--keep", type=Path, help="keep the two studies' stores in this (new or empty) folder"
    )
    args = parser.parse_args()
    source = Path(args.spec).resolve()
    spec = yaml.safe_load(source.read_text())
    seeds = spec.get("seeds")
    if not isinstance(seeds, dict):
        sys.exit(f"{args.spec}: seeds must be adaptive ({{min, max, step}}), got {seeds!r}")
    spec["experiment"] = str((source.parent / spec["experiment"]).resolve())
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        sys.exit(f"--keep {args.keep}: the folder is not empty")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep.resolve() if args.keep is not None else Path(scratch)
        for design, value in (("fixed", int(seeds["max"])), ("adaptive", seeds)):
            folder = Path(tmp) / design
            folder.mkdir(parents=True)
            name = f"ttv-{design}"
            path = folder / "spec.yaml"
            path.write_text(yaml.safe_dump({**spec, "name": name, "seeds": value}))
            print(f"running the {design} design ({value!r} seeds) ...", file=sys.stderr, flush=True)
            results[design] = run(path, name, args.workers, folder)
    fixed, adaptive = results["fixed"], results["adaptive"]
    agree = sum(fixed["verdicts"][k] == adaptive["verdicts"].get(k) for k in fixed["verdicts"])
    print(f"time to a verdict on {args.spec} ({cpu_isa()}, {args.workers} workers):")
    for design, r in results.items():
        counts = {v: list(r["verdicts"].values()).count(v) for v in ("better", "worse", "equivalent", "inconclusive")}  # fmt: skip
        print(
            f"  {design:<8} {r['cpu_s']:7.0f} CPU s  {r['wall_s']:6.0f} s wall  {r['seed_runs']:3d} seed runs  "
            + ", ".join(f"{n} {v}" for v, n in counts.items())
        )
    print(
        f"  adaptive/fixed: CPU x{adaptive['cpu_s'] / fixed['cpu_s']:.2f}, seed runs "
        f"x{adaptive['seed_runs'] / fixed['seed_runs']:.2f}; verdicts agree on {agree} of {len(fixed['verdicts'])}"
    )
    for key, verdict in fixed["verdicts"].items():
        print(f"    {key}: fixed {verdict}, adaptive {adaptive['verdicts'].get(key)}")
    if args.json:
        args.json.write_text(json.dumps({"isa": cpu_isa(), **results, "agree": agree}, indent=2))


if __name__ == "__main__":
    main()
