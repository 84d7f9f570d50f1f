"""``latentseg models [PATTERN]``: the registered variants with their size and cost."""

from __future__ import annotations

import argparse
import json

from latentseg.cli import flags
from latentseg.errors import LatentSegError


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "models",
        help="list registered model variants with params and FLOPs",
        description="List model variants: name, parameters, forward FLOPs per image, and the axes that differ from 'tutorial'.",
    )
    parser.add_argument(
        "pattern", nargs="?", default="*", help="wildcard pattern, e.g. 'latents-*'"
    )
    parser.add_argument(
        "--image-size",
        type=flags.image_size,
        default=128,
        help="image side for the FLOP count (default 128, the tutorial's)",
    )
    flags.json_output(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from latentseg.config import ModelConfig
    from latentseg.models import count_flops, count_params, create_model, kv_costs, list_models

    names = list_models(args.pattern)
    if not names:
        raise LatentSegError(
            f"no model variant matches {args.pattern!r}; `latentseg models` lists them all"
        )
    size = (args.image_size, args.image_size)
    rows = []
    for name in names:
        model = create_model(name)
        rows.append(
            {
                "name": name,
                "params": count_params(model),
                "flops_per_image": count_flops(model.config, size),
                **kv_costs(model, size),
                "axes": changed_axes(model.config, ModelConfig()),
                "config": model.config.model_dump(mode="json"),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'variant':<16} {'params':>9} {'GFLOP/img':>9} {'KV params':>9} {'KV elems':>9}  axes (vs tutorial; per image at {args.image_size}x{args.image_size})"
    )
    for row in rows:
        print(
            f"{row['name']:<16} {row['params']:>9,} {row['flops_per_image'] / 1e9:>9.3f} "
            f"{row['kv_params']:>9,} {row['kv_activations']:>9,}  {row['axes']}"
        )
    return 0


def changed_axes(config, reference) -> str:
    """``key=value`` for each model setting that differs from ``reference`` (the tutorial's)."""
    changed = [
        f"{k}={v}"
        for k, v in config.model_dump().items()
        if v != getattr(reference, k) and k not in {"num_classes", "in_channels"}
    ]
    return ", ".join(changed) or "(tutorial)"
