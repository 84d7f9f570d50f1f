"""``latentseg noise EXPERIMENT``: where one configuration's noise comes from, source by source
(initial weights, data order and augmentation, the data sample, the test set)."""

from __future__ import annotations

import argparse
from pathlib import Path

from latentseg.cli import flags


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "noise",
        help="split a configuration's seed noise by source (weights, data order, data, test set)",
        description="Train one configuration (or, with --versus, a variant against it) varying "
        "one source of randomness at a time over --levels values: the initial weights, the data "
        "order and augmentation, the data sample (data.seed), and all training sources together "
        "(a study's seeds); the test set's share comes from resampling its images. Prints each "
        "source's SD and share and what would cut it; writes noise.csv and noise.md. Each source "
        "is a grid study named NAME-SOURCE, tracked in MLflow; running the command again resumes.",
    )
    parser.add_argument("experiment", help="experiment YAML, e.g. experiments/shapes.yaml")
    parser.add_argument(
        "--versus",
        metavar="KEY=VALUE",
        help="measure the paired difference of this variant against the configuration, "
        "e.g. --versus model.num_latents=8 (default: the configuration's own score)",
    )
    parser.add_argument(
        "--sources",
        default="weights,order,data,all",
        help="comma-separated, from weights, order, data, all (default: all four)",
    )
    parser.add_argument(
        "--levels", type=int, default=6, help="values of each source (default 6; at least 2)"
    )
    parser.add_argument(
        "--workers", type=flags.positive_int, default=1, help="worker processes on this machine"
    )
    parser.add_argument("--name", help="the studies' prefix (default: <experiment>-noise)")
    parser.add_argument("--storage", help="Optuna storage URL (default as for study)")
    parser.add_argument(
        "-o", "--output", help="folder for noise.csv, noise.md and the studies' specs "
        "(default reports/<name>)",
    )  # fmt: skip
    flags.tracking_uri(parser)
    flags.overrides(parser)
    flags.no_progress(parser, help="no progress bars")
    return parser


def run(args: argparse.Namespace) -> int:
    from latentseg.report.sources import findings, measure
    from latentseg.study import run_study
    from latentseg.study.noise import noise_design, parse_sources
    from latentseg.tracking.store import TrackingStore

    sources = parse_sources(args.sources)
    stem = args.name or f"{Path(args.experiment).stem}-noise"
    out = Path(args.output or Path("reports") / stem)
    design = noise_design(
        args.experiment, args.overrides, args.versus, sources, args.levels, stem, out / "specs"
    )
    uri = None
    for source, spec in design.specs.items():
        print(f"{source}: {design.levels} levels ({spec})", flush=True)
        result = run_study(
            str(spec),
            workers=args.workers,
            storage=args.storage,
            tracking_uri=args.tracking_uri,
            progress=not args.no_progress,
        )
        uri = result.tracking_uri
    store = TrackingStore.open(uri, create=False)
    table, notes = measure(
        design.name, sources, design.axis, design.baseline, design.variant, store
    )
    what = (
        f"test mIoU of {design.axis}={design.variant} minus {design.axis}={design.baseline} "
        "(paired)"
        if design.variant is not None
        else f"test mIoU of {design.axis}={design.baseline}"
    )
    lines = [f"where the noise comes from: {what}, {design.levels} levels per source"]
    lines.append(f"  {'source':<8} {'varies':<58} {'SD':>7} {'of seeds':>9}")
    for _, row in table.iterrows():
        share = row["of_seed_variance"]
        lines.append(
            f"  {row['source']:<8} {row['varies'][:58]:<58} {row['sd']:7.4f} "
            f"{'' if share != share else f'{share:9.0%}'}"
        )
    said = findings(table)
    print("\n".join(lines + [f"  {line}" for line in said + notes]))
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "noise.csv", index=False)
    (out / "noise.md").write_text(
        f"# Where the noise comes from: {design.name}\n\n{what}, {design.levels} levels per "
        "source, each varied alone (the others at the reference seed).\n\n"
        + _markdown(table)
        + "\n\n"
        + "\n".join(f"- {line}" for line in said + notes)
        + "\n"
    )
    print(f"wrote {out / 'noise.csv'} and {out / 'noise.md'}")
    return 0


def _markdown(table) -> str:
    head = list(table.columns)

    def cell(value) -> str:
        if isinstance(value, float):
            if value != value:
                return ""
            return str(int(value)) if value.is_integer() and value > 1 else f"{value:.4f}"
        return str(value)

    rows = [[cell(v) for v in row] for row in table.itertuples(index=False)]
    return "\n".join(
        ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        + ["| " + " | ".join(r) + " |" for r in rows]
    )
