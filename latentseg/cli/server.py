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
    who = parser.add_mutually_exclusive_group()
    who.add_argument(
        "--auth",
        action="store_true",
        default=None,
        help="ask every client who it is (MLflow's basic-auth app) also on loopback; on by "
        "default beyond it",
    )
    who.add_argument(
        "--no-auth",
        dest="auth",
        action="store_false",
        help="serve beyond loopback without authentication (anyone who reaches the port can "
        "change every run)",
    )
    parser.add_argument(
        "--admin-password-file",
        metavar="FILE",
        help="the admin's password, first line of a file only you can read (chmod 600); "
        "default: the MLFLOW_AUTH_ADMIN_PASSWORD environment variable. Never on the command line.",
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
        auth=args.auth,
        admin_password_file=args.admin_password_file,
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
        + (
            f"  who may use it: users in {launch.auth}; clients set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD\n"
            if launch.auth
            else ""
        )
        + f"  workers on any machine: latentseg study SPEC --tracking-uri {where} --storage postgresql://...\n"
        "  Ctrl-C to stop",
        flush=True,
    )
    os.execve(launch.command[0], launch.command, launch.env)
    return 0  # not reached
