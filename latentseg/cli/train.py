"""``latentseg train CONFIG``: one experiment, tracked in MLflow."""

from __future__ import annotations

import argparse

from latentseg.cli import flags


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "train",
        help="train one experiment config, tracked in MLflow",
        description="Train one experiment YAML; logs params, metrics, checkpoints, attention plots and the model to MLflow.",
    )
    parser.add_argument("config", help="experiment YAML, e.g. experiments/shapes.yaml")
    flags.overrides(parser)
    flags.tracking_uri(
        parser,
        help="MLflow tracking URI (default: the config's, $MLFLOW_TRACKING_URI, or sqlite:///mlruns/mlflow.db)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue this MLflow run from its last checkpoint (or give a last.ckpt path)",
    )
    flags.no_progress(parser, help="no progress bar or per-epoch lines")
    return parser


def run(args: argparse.Namespace) -> int:
    from latentseg.tracking import run_experiment
    from latentseg.tracking.store import ui_hint

    result = run_experiment(
        args.config,
        overrides=args.overrides,
        tracking_uri=args.tracking_uri,
        resume=args.resume,
        progress=not args.no_progress,
    )
    summary = result.summary
    if args.no_progress:  # otherwise the progress callback has printed it
        print(
            f"best val_miou {summary.get('best_val_miou', float('nan')):.4f} (epoch {int(summary.get('best_epoch', 0))}), test_miou {summary.get('test_miou', float('nan')):.4f}"
        )
    if result.run_id is None:
        print(f"tracking off; checkpoints in {result.checkpoint_dir}")
        return 0
    print(
        f"MLflow run {result.run_id} {result.status} (experiment {result.experiment_id}, store {result.tracking_uri})"
    )
    print(ui_hint(result.tracking_uri, result.experiment_id, result.run_id))
    return 0
