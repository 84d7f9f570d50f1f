"""``latentseg datasets [PATTERN]`` lists the datasets; ``latentseg datasets check TARGET``
checks a folder, an experiment's data section or a named dataset (exit 2 on any problem)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from latentseg.cli import flags
from latentseg.errors import ConfigError, LatentSegError


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "datasets",
        help="list datasets, or check one",
        usage="latentseg datasets [PATTERN] [--json]\n"
        "       latentseg datasets check PATH_OR_NAME [--param KEY=VALUE ...] [--max-samples N] [--json]",
        description="List datasets (name, classes, channels, default image size, origin), or "
        "check one: a folder (images/ + masks/), an experiment YAML's data section, or a "
        "dataset name. The check reports missing or extra files, size mismatches, labels "
        "outside the classes, unreadable files and the class histogram; exit 2 on any problem.",
    )
    parser.add_argument(
        "words",
        nargs="*",
        metavar="PATTERN | check PATH_OR_NAME",
        help="wildcard pattern (default *)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dataset parameter for check, e.g. --param image_size=64 (repeatable)",
    )
    parser.add_argument(
        "--max-samples",
        type=flags.positive_int,
        default=None,
        help="check: read at most N samples per split of a named dataset (default: all)",
    )
    flags.json_output(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.words[:1] == ["check"]:
        if len(args.words) != 2:
            raise ConfigError("usage: latentseg datasets check PATH_OR_NAME (one target)")
        return run_check(args, args.words[1])
    if len(args.words) > 1:
        raise ConfigError(
            f"datasets: expected one PATTERN or 'check PATH_OR_NAME', got {' '.join(args.words)!r}"
        )
    if args.param or args.max_samples:
        raise ConfigError("--param and --max-samples apply to 'latentseg datasets check'")
    return run_list(args, args.words[0] if args.words else "*")


def run_list(args: argparse.Namespace, pattern: str) -> int:
    import warnings

    from latentseg.data import list_datasets

    with warnings.catch_warnings(record=True) as caught:  # broken plugins: shown below the table
        warnings.simplefilter("always")
        names = list_datasets(pattern)
    if not names:  # a name typed wrong (or a broken plugin's, warned about): say so
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        raise LatentSegError(f"no dataset matches {pattern!r}; `latentseg datasets` lists them all")
    rows = [dataset_row(name) for name in names]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    for warning in caught:  # on stderr, also with --json: a broken plugin never vanishes silently
        print(f"warning: {warning.message}", file=sys.stderr)
    return 0


def dataset_row(name: str) -> dict[str, Any]:
    """A dataset's name, origin, description and, when it opens without parameters, its
    classes, channels and image size (else the parameters it needs, or why it fails)."""
    from latentseg.data import DATASETS, create_dataset

    builder = DATASETS.get(name)
    row: dict[str, Any] = {
        "name": name,
        "origin": DATASETS.origin(name),
        "description": first_sentence(getattr(builder, "__doc__", None)),
    }
    params = getattr(builder, "Params", None)
    required = [k for k, f in params.model_fields.items() if f.is_required()] if params else []
    if required:
        return row | {"needs": [f"data.params.{k}" for k in required]}
    try:
        info = create_dataset(name, split_sizes={"train": 1, "val": 1, "test": 1}).info
    except Exception as exc:  # noqa: BLE001 - a plugin's failure must not hide the list
        return row | {"error": f"{type(exc).__name__}: {exc}"}
    return row | {
        "classes": list(info.class_names),
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
        "image_size": list(info.image_size),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'dataset':<12} {'classes':>7} {'ch':>3} {'size':>9}  {'origin':<10} about")
    for row in rows:
        if "num_classes" in row:
            shape = f"{row['num_classes']:>7} {row['in_channels']:>3} {'x'.join(map(str, row['image_size'])):>9}"
        else:
            shape = f"{'-':>7} {'-':>3} {'-':>9}"
        origin = "built-in" if row["origin"] == "built-in" else "plugin"
        about = row["description"]
        if "needs" in row:
            about += f" [needs {', '.join(row['needs'])}]"
        if "error" in row:
            about += f" [cannot open: {row['error']}]"
        print(f"{row['name']:<12} {shape}  {origin:<10} {about}")
        if origin == "plugin":
            print(f"{'':<12} {'':>7} {'':>3} {'':>9}  {'':<10} from {row['origin']}")


def first_sentence(doc: str | None, limit: int = 90) -> str:
    text = " ".join((doc or "").strip().split("\n\n")[0].split()).replace("``", "")
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 3].rstrip() + "..."


def run_check(args: argparse.Namespace, target: str) -> int:
    from latentseg.config import parse_override
    from latentseg.data.check import check_target

    params = {}
    for item in args.param:
        key, value = parse_override(item, "--param", "image_size=64")
        params[key] = value
    report = check_target(target, params, args.max_samples)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.render())
    return 0 if report.ok else 2
