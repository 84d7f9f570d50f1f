"""The ``latentseg`` command. Thin: one module per command (its parser and its run), the
flags several commands share declared once (:mod:`latentseg.cli.flags`), and :func:`main`
mapping errors to exit codes in one place (bad input: 2; a store that cannot be written: 3;
interrupted: 130)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

from latentseg.cli import bench, datasets, models, noise, report, server, study, train, ui
from latentseg.cli.server import server_command
from latentseg.errors import LatentSegError

EXIT_INTERRUPTED = 130

COMMANDS = (train, study, report, noise, models, datasets, bench, ui, server)  # in --help's order

__all__ = ["COMMANDS", "build_parser", "main", "server_command"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentseg",
        description="Ablations of latent-attention segmentation models, tracked in MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands).set_defaults(run=command.run)
    return parser


def _version() -> str:
    from latentseg import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return its exit code.
    Without ``argv`` (the ``latentseg`` command, which owns its process), the process ends
    with that code without the interpreter's teardown of torch and MLflow
    (:mod:`latentseg.exiting`)."""
    if argv is not None:
        return _main(argv)
    from latentseg.exiting import end_quickly, set_status

    end_quickly()  # first: its handler runs after every other one
    code = _main(None)
    set_status(code)
    return code


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _tune_process()
    from latentseg.train import TrainingInterrupted

    try:
        with _renames_as_notes():
            return args.run(args)
    except LatentSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if argv is None and getattr(exc, "exit_at_once", False):  # the command's own process
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.exit_code)  # a library thread left running must not see shutdown
        return exc.exit_code
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _tune_process() -> None:
    """The command line owns its process: tuned for training speed (huge pages, malloc), and
    figures drawn off-screen. A library import changes none of it (latentseg.tune_process)."""
    import warnings

    import matplotlib
    from PIL.Image import DecompressionBombWarning

    import latentseg

    latentseg.tune_process()
    matplotlib.use("Agg")
    # Pillow warns of images above 89 megapixels as it opens them; latentseg's own limit
    # (data.params.max_pixels) is checked on the same header and names the file instead.
    warnings.filterwarnings("ignore", category=DecompressionBombWarning)


@contextlib.contextmanager
def _renames_as_notes() -> Iterator[None]:
    """Within it, a renamed variant (``seed`` is ``tutorial`` now) is a one-line ``note:``,
    not a warning with a source line; other warnings show as usual."""
    import warnings

    from latentseg.registry import RenamedWarning

    with warnings.catch_warnings():
        show = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, RenamedWarning):
                print(f"note: {message}", file=sys.stderr, flush=True)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        yield
