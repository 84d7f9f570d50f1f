"""``latentseg server``: an MLflow tracking server that serves artifacts, for a team."""

from __future__ import annotations

import argparse
import os
import sys

from latentseg.cli import flags


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "server",
        help="start an MLflow tracking server for a team",
        description="Start an MLflow tracking server that serves artifacts, for studies run on "
        "several machines (`latentseg study ... --tracking-uri http://HOST:PORT`). Bound to "
        "127.0.0.1 unless --host says otherwise. A PostgreSQL password is handed to the server "
        "in its environment (PGPASSWORD), never on its command line or in what it prints.",
    )
    parser.add_argument(
        "--backend-store-uri",
        default=None,
        help="where runs are kept, e.g. postgresql://mlflow:PASSWORD@db-host/mlflow "
        "(default: the project's sqlite:///mlruns/mlflow.db)",
    )
    parser.add_argument(
        "--artifacts-destination",
        default=None,
        help="where the server stores artifacts: a local folder or s3://..., gs://... "
        "(default: mlruns/artifacts)",
    )
    flags.host_and_port(parser)
    parser.add_argument(
        "--allowed-hosts",
        default=None,
        help="comma-separated Host headers to accept, e.g. mlflow.lab.example:5000 (needed when "
        "binding beyond localhost)",
    )
    parser.add_argument(
        "--workers", type=flags.positive_int, default=2, help="web workers (default 2)"
    )
    return parser


def server_command(args: argparse.Namespace):
    """The ``mlflow server`` launch (command, environment, warnings) for parsed ``args``."""
    from latentseg.tracking.server import server_command

    return server_command(
        backend_store_uri=args.backend_store_uri,
        artifacts_destination=args.artifacts_destination,
        host=args.host,
        port=args.port,
        workers=args.workers,
        allowed_hosts=args.allowed_hosts,
    )


def run(args: argparse.Namespace) -> int:
    from latentseg.tracking.store import redact

    launch = server_command(args)
    for warning in launch.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    where = f"http://{args.host}:{args.port}"
    backend = redact(args.backend_store_uri) or launch.option("--backend-store-uri")
    print(
        f"MLflow tracking server at {where}: runs in {backend}, "
        f"artifacts in {launch.option('--artifacts-destination')} (served)\n"
        f"  workers on any machine: latentseg study SPEC --tracking-uri {where} --storage postgresql://...\n"
        "  Ctrl-C to stop",
        flush=True,
    )
    os.execve(launch.command[0], launch.command, launch.env)
    return 0  # not reached
