"""``latentseg ui``: a lean MLflow UI on the project's tracking store."""

from __future__ import annotations

import argparse
import os

from latentseg.cli import flags


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "ui",
        help="start the MLflow UI on the project's store",
        description="Start a lean MLflow UI (one worker) on 127.0.0.1 for the project's tracking store and print its URL.",
    )
    flags.tracking_uri(
        parser, help="backend store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)"
    )
    flags.host_and_port(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from latentseg.tracking.server import ui_command
    from latentseg.tracking.store import MODEL_TRAINING_VIEW, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    launch = ui_command(uri, args.host, args.port)
    print(
        f"MLflow UI for {uri} at http://{args.host}:{args.port}/#/experiments?{MODEL_TRAINING_VIEW}"
        "  (Ctrl-C to stop)",
        flush=True,
    )
    # The server replaces this process: no idle latentseg parent.
    os.execve(launch.command[0], launch.command, launch.env)
    return 0  # not reached
