"""Flags that several commands share, declared once, and the value types of the command line.
A command adds a shared flag with its function, so every command reads it the same way."""

from __future__ import annotations

import argparse

TRACKING_URI_HELP = "MLflow tracking URI (default as for train)"


def tracking_uri(parser: argparse.ArgumentParser, help: str = TRACKING_URI_HELP) -> None:
    """``--tracking-uri URI`` (``args.tracking_uri``, None: the command's default store)."""
    parser.add_argument("--tracking-uri", help=help)


def host_and_port(parser: argparse.ArgumentParser) -> None:
    """``--host`` and ``--port`` of a server: loopback and 5000 unless told."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")


def json_output(parser: argparse.ArgumentParser) -> None:
    """``--json``: print machine-readable output instead of a table."""
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def overrides(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable; ``args.overrides``)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=3e-4 (repeatable)",
    )


def no_progress(parser: argparse.ArgumentParser, help: str) -> None:
    """``--no-progress``: no progress bar (``args.no_progress``)."""
    parser.add_argument("--no-progress", action="store_true", help=help)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def image_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 8 or value % 4 or value > 4096:
        raise argparse.ArgumentTypeError(f"must be a multiple of 4 between 8 and 4096, got {value}")
    return value
