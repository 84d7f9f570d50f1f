"""How long `latentseg report` takes over many runs (a benchmark, not a test).

    .venv/bin/python benchmarks/report_scale.py --runs 1000 [--runs 10000]

The same measurement as `latentseg bench --only report --report-runs N`: writes N finished
seed-level runs (a latents x heads x expert-attention grid, seeds to fill N, ~30 metrics each)
into a fresh SQLite store under a temporary folder, then times the report (collecting them
from MLflow, computing the report and writing its files) alternated with
`mlflow.search_runs` alone on the same store, over 3 windows each (medians).
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, action="append", help="run counts (repeatable; default 1000)"
    )
    args = parser.parse_args()
    from latentseg.bench.overheads import bench_report

    for runs in args.runs or [1000]:
        r = bench_report(runs)
        print(
            f"{runs:>6} runs: report {r['report_s']:6.2f} s (collect {r['collect_s']:.2f} s, "
            f"statistics and files {r['report_s'] - r['collect_s']:.2f} s); "
            f"mlflow.search_runs alone {r['search_runs_s']:.2f} s "
            f"({r['report_to_search_runs']:.2f}x); writing them took {r['write_s']:.1f} s"
        )


if __name__ == "__main__":
    main()
