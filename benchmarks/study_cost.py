"""What a study costs and what it decides: each spec runs as its own ``latentseg study``
process in a fresh temporary store, one after the other on this machine.

    .venv/bin/python benchmarks/study_cost.py studies/ablation-small.yaml [SPEC ...] [--workers 2]

Prints, per spec: CPU seconds (the study's processes), wall seconds, seed runs and its
verdicts (better, worse, equivalent, inconclusive, over variants and main effects), the
figures of docs/results.md's "Designs that decide". ``--json PATH`` also writes them there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from time_to_verdict import run  # noqa: E402 - the same measured launch

from latentseg.bench.machine import cpu_isa  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("specs", nargs="+", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, source in enumerate(args.specs):
            spec = yaml.safe_load(source.read_text())
            spec["experiment"] = str((source.resolve().parent / spec["experiment"]).resolve())
            folder = Path(tmp) / str(index)
            folder.mkdir()
            name = f"cost-{source.stem}"
            path = folder / "spec.yaml"
            path.write_text(yaml.safe_dump({**spec, "name": name}))
            print(f"running {source} ...", file=sys.stderr, flush=True)
            results[str(source)] = run(path, name, args.workers, folder)
    print(f"what each study costs ({cpu_isa()}, {args.workers} workers):")
    for spec, r in results.items():
        verdicts = list(r["verdicts"].values())
        counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("better", "worse", "equivalent", "inconclusive"))  # fmt: skip
        decided = len(verdicts) - verdicts.count("inconclusive")
        print(
            f"  {spec}: {r['cpu_s']:.0f} CPU s, {r['wall_s']:.0f} s wall, {r['seed_runs']} seed runs; "
            f"{decided} of {len(verdicts)} decided ({counts})"
        )
    if args.json:
        args.json.write_text(json.dumps({"isa": cpu_isa(), **results}, indent=2))


if __name__ == "__main__":
    main()
