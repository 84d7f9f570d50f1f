"""Common random numbers: the noise of paired differences with each module's initial weights
from its own stream (``train.init=modules``, the default) and from one global stream
(``train.init=global``), the same grid and seeds run one after the other on this machine.

    .venv/bin/python benchmarks/common_random_numbers.py [--spec studies/crn.yaml] [--workers 2]

Each design runs as its own ``latentseg study`` process in a fresh store (``--keep DIR``
keeps them). For every comparison with the baseline (``--baseline model.num_latents=16``) it
prints the SD of the seed-paired differences of test mIoU under each design, their ratio,
the correlation of the two sides across seeds, and what the ratio means in seeds: the seeds
a paired t-test needs grow with the variance, so a ratio r of SDs is r**2 of the seeds.
``--json PATH`` also writes the figures there.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from latentseg.bench.harness import stopwatch
from latentseg.bench.machine import cpu_isa

DESIGNS = ("global", "modules")


def run(spec: Path, name: str, workers: int, folder: Path, baseline: dict) -> dict:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    command = [str(Path(sys.executable).parent / "latentseg"), "study", str(spec), "--workers", str(workers),
               "--tracking-uri", uri, "--storage", f"journal:{folder / 'journal.log'}", "--no-progress"]  # fmt: skip
    with stopwatch() as study:
        done = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    if done.returncode != 0:
        sys.exit(f"{name}: latentseg study failed ({done.returncode}):\n{done.stderr[-3000:]}")
    from latentseg.report import ablation_report

    report = ablation_report(study=name, tracking_uri=uri, figures=False, baseline=baseline)
    rows = {}
    for _, row in report.summary[report.summary["verdict"] != "baseline"].iterrows():
        key = ", ".join(f"{k}={row[k]}" for k in report.axes)
        rows[key] = {
            name: float(row[name]) for name in ("diff", "sd_diff", "corr", "n_pairs", "std")
        } | {"verdict": str(row["verdict"])}
    return {"cpu_s": study.cpu_s, "wall_s": study.wall_s, "comparisons": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--spec", default="studies/crn.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline", default="model.num_latents=16", help="KEY=VALUE[,KEY=VALUE]")
    parser.add_argument("--keep", type=Path, help="keep each design's store in DIR/<design>")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    source = Path(args.spec).resolve()
    spec = yaml.safe_load(source.read_text())
    spec["experiment"] = str((source.parent / spec["experiment"]).resolve())
    baseline = {}
    for item in args.baseline.split(","):
        key, _, value = item.partition("=")
        baseline[key.strip()] = yaml.safe_load(value)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for design in DESIGNS:
            folder = root / design
            folder.mkdir(parents=True, exist_ok=True)
            name = f"crn-{design}"
            overrides = {**spec.get("overrides", {}), "train.init": design}
            path = folder / "spec.yaml"
            path.write_text(yaml.safe_dump({**spec, "name": name, "overrides": overrides}))
            print(f"running train.init={design} ...", file=sys.stderr, flush=True)
            results[design] = run(path, name, args.workers, folder, baseline)
    old, new = results["global"], results["modules"]
    print(f"common random numbers on {args.spec} ({cpu_isa()}, {args.workers} workers), test mIoU:")
    print(f"  {'comparison':<28} {'SD of diff: global':>18} {'modules':>8} {'ratio':>6} {'seeds x':>7} {'r: global':>9} {'modules':>8}")  # fmt: skip
    ratios = []
    for key, before in old["comparisons"].items():
        after = new["comparisons"].get(key)
        if after is None:
            continue
        ratio = after["sd_diff"] / before["sd_diff"] if before["sd_diff"] > 0 else math.nan
        ratios.append(ratio)
        print(
            f"  {key:<28} {before['sd_diff']:18.4f} {after['sd_diff']:8.4f} {ratio:6.2f} "
            f"{ratio**2:7.2f} {before['corr']:9.2f} {after['corr']:8.2f}"
        )
    if ratios:
        mean_square = math.sqrt(sum(r * r for r in ratios) / len(ratios))
        print(
            f"  root-mean-square ratio of SDs: {mean_square:.2f} (seeds needed x{mean_square**2:.2f})"
        )
    for design, r in results.items():
        print(f"  train.init={design}: {r['cpu_s']:.0f} CPU s, {r['wall_s']:.0f} s wall")
    if args.json:
        args.json.write_text(json.dumps({"isa": cpu_isa(), **results}, indent=2))


if __name__ == "__main__":
    main()
