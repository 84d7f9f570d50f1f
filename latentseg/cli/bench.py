"""``latentseg bench``: speed and memory of the fast path against the tutorial's reference,
and the overheads of data loading, tracking, studies and reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latentseg.cli import flags
from latentseg.errors import ConfigError


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "bench",
        help="speed and memory of the fast path vs the tutorial's reference, and overheads",
        description="For each variant: params, FLOPs, training and inference images/s and "
        "activation memory of latentseg's fast path and of the tutorial's reference "
        "implementation of the same model, alternated in one run (medians and ratios), and "
        "the share of the machine's matmul speed reached; then data loading vs a training "
        "step, tracking overhead, study overhead per trial and report time.",
    )
    parser.add_argument(
        "--variants",
        default="tutorial",
        metavar="PATTERN",
        help="variant pattern (default tutorial, the tutorial's model)",
    )
    parser.add_argument(
        "--batch-size", type=flags.positive_int, default=32, help="batch size (default 32)"
    )
    parser.add_argument(
        "--image-size", type=flags.image_size, default=128, help="image side (default 128)"
    )
    parser.add_argument(
        "--threads",
        type=flags.positive_int,
        default=None,
        help="torch CPU threads (default: torch's)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the models train and infer in every section (default cpu); on cuda the "
        "fast path's bf16 autocast is timed where the GPU has bf16",
    )
    parser.add_argument(
        "--windows",
        type=flags.positive_int,
        default=5,
        help="timed windows per contender (default 5)",
    )
    parser.add_argument(
        "--steps", type=flags.positive_int, default=5, help="steps per window (default 5)"
    )
    parser.add_argument(
        "--only",
        default="models,data,tracking,study,report,bf16",
        help="comma-separated sections: models,data,tracking,study,report,bf16 (default all)",
    )
    parser.add_argument(
        "--report-runs",
        type=flags.positive_int,
        action="append",
        default=None,
        help="run counts for the report section (repeatable; default 1000 and 10000)",
    )
    parser.add_argument(
        "--study-trials",
        type=flags.positive_int,
        action="append",
        default=None,
        help="queued trials for the study section (repeatable; default 10 and 1000)",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=None,
        help="also measure the study section on PostgreSQL: a server URL whose database the "
        "bench may connect to, e.g. postgresql://postgres@127.0.0.1:5432/postgres (it creates "
        "a scratch database there and drops it after)",
    )
    # Not the shared --json (print instead of a table): the bench prints its tables and also
    # writes the results to FILE.
    parser.add_argument(
        "--json", metavar="FILE", default=None, help="also write the results as JSON"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from latentseg.bench import SECTIONS, run_bench
    from latentseg.bench.overheads import REPORT_SIZES, STUDY_SIZES
    from latentseg.io import atomic_write_bytes
    from latentseg.models import list_models

    sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ConfigError(f"--only {args.only!r}: sections are {', '.join(SECTIONS)}")
    variants = list_models(args.variants)
    if "models" in sections and not variants:
        raise ConfigError(f"--variants {args.variants!r} matches no variant (see latentseg models)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: torch sees no CUDA device here (a CPU build of torch, or no GPU); "
            "use --device cpu"
        )
    if args.postgres is not None and not args.postgres.startswith("postgresql"):
        raise ConfigError(
            f"--postgres {args.postgres!r}: expected postgresql://USER@HOST:PORT/DATABASE"
        )
    if args.json and not Path(args.json).parent.is_dir():
        raise ConfigError(f"--json {args.json}: directory {Path(args.json).parent} does not exist")
    if args.postgres is not None and "study" in sections:
        from latentseg.bench.overheads import scratch_database

        with scratch_database(args.postgres):  # reachable, and the bench may create databases
            pass
    result = run_bench(
        variants,
        batch_size=args.batch_size,
        image_size=args.image_size,
        threads=args.threads,
        windows=args.windows,
        steps=args.steps,
        sections=sections,
        report_runs=tuple(args.report_runs or REPORT_SIZES),
        device=args.device,
        study_trials=tuple(args.study_trials or STUDY_SIZES),
        postgres=args.postgres,
    )
    if args.json:
        atomic_write_bytes(Path(args.json), json.dumps(result, indent=2).encode())
        print(f"wrote {args.json}")
    return 0
