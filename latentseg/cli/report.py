"""``latentseg report``: verdicts for the variants of a study or experiment, written to files
and, for a study, attached to its latest parent run."""

from __future__ import annotations

import argparse
from pathlib import Path

from latentseg.cli import flags


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "report",
        help="verdicts for the variants of a study or experiment: better, worse, equivalent or inconclusive",
        description="Group finished runs by the params that vary, pair each variant with a baseline by seed, and "
        "give each variant and each axis's main effect a verdict (better, worse, equivalent, inconclusive) with "
        "the family-wise error controlled over all of them (Holm by default). The metric is the test split at "
        "each run's best-validation checkpoint. Writes report.md, report.html and summary.csv (plus "
        "effects.csv, interactions.csv); for a study also logs them to its latest parent run.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", help="study name (its seed runs)")
    which.add_argument("--experiment", help="MLflow experiment name (its training runs)")
    flags.tracking_uri(parser)
    parser.add_argument("-o", "--output", help="output folder (default reports/<name>/)")
    parser.add_argument(
        "--metric",
        help="metric to compare (default: the study's primary metric, report.metric in its spec, "
        "else miou: test_miou, the test split at each run's best-validation checkpoint); another "
        "metric is reported as secondary",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="baseline variant, one value per axis (default: the tutorial's configuration, else the "
        "variant closest to it; never chosen by its score)",
    )
    parser.add_argument(
        "--sesoi",
        type=float,
        help="smallest effect of interest: a difference within +-SESOI is 'equivalent' "
        "(default: the study spec's report.sesoi, else 0.01 for metrics in [0, 1])",
    )
    parser.add_argument(
        "--alpha", type=float, help="family-wise error rate (default: the spec's, else 0.05)"
    )
    parser.add_argument(
        "--correction",
        choices=["holm", "bonferroni", "bh"],
        help="multiple-comparison control: holm (default), bonferroni, or bh (false discovery "
        "rate, for exploratory sweeps)",
    )
    parser.add_argument(
        "--front",
        action="append",
        default=[],
        metavar="METRIC",
        help="an objective of the Pareto front, repeatable: a cost (model_params, "
        "model_flops_per_image, model_kv_params, model_kv_activations_per_image, "
        "train_images_per_s) or a quality metric (read on the test split); default: the "
        "study's objectives, else the metric against model_params",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from latentseg.config import parse_override
    from latentseg.errors import StoreWriteError
    from latentseg.report import ablation_report
    from latentseg.report.cells import front_lines
    from latentseg.report.labels import baseline_label
    from latentseg.report.writers import verdict_lines
    from latentseg.tracking import TrackingStore

    name = args.study or args.experiment
    report = ablation_report(
        study=args.study,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri,
        metric=args.metric,
        baseline=dict(parse_override(item) for item in args.baseline) if args.baseline else None,
        sesoi=args.sesoi,
        alpha=args.alpha,
        correction=args.correction,
        front=args.front or None,
        output=args.output or Path("reports") / name,
    )
    if report.parent_run_id is not None:
        try:
            store = TrackingStore.open(report.tracking_uri, create=False)
            store.attach_files(report.parent_run_id, report.paths, "report")
        except StoreWriteError as exc:  # a read-only store: the report still stands
            print(f"note: the report is not attached to the study's parent run: {exc}")
    print(report.notes[0])  # the runs left out
    print(
        f"baseline: {baseline_label(report.baseline)} ({report.baseline_reason}); {len(report.summary)} variants"
    )
    print("\n".join(verdict_lines(report) + front_lines(report)))
    print(f"report: {report.paths[0]}  {report.paths[2]}  summary: {report.paths[1]}")
    return 0
