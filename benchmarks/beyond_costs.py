"""What the axes beyond the tutorial cost, measured side by side in one run.

    .venv/bin/python benchmarks/beyond_costs.py [--variants tutorial,mla-r16,...] [--image-size 128]

For each variant, on latentseg's fast path (fused attention, channels-last, fused Adam) with
the same batch: the median seconds of a training step and of an inference batch over
alternating timed windows, the activation memory a training forward holds for the backward
(autograd's saved tensors, each storage once), parameters, forward FLOPs and the key/value
costs of ``kv_costs``. Every figure is also given as a ratio to the first variant (``tutorial``).
"""

from __future__ import annotations

import argparse
import json

import torch

from latentseg.bench.harness import alternate, repeated
from latentseg.bench.model_speed import activation_megabytes, bench_inputs, contenders
from latentseg.models import count_flops, count_params, kv_costs

VARIANTS = "tutorial,fourier,learned-pos,perceiver-d2,mla-r16,mla-r8,moe-8x2-s1,skip"


def measure(
    names: list[str], batch_size: int, image_size: int, windows: int, steps: int
) -> list[dict]:
    """One row per variant on the fast path, alternated on the bench's harness; every figure
    also as a ratio to the first variant's."""
    images, masks = bench_inputs(batch_size, image_size)
    fast = {name: contenders(name, bf16=False)["fast"] for name in names}
    train = alternate(
        {n: repeated(lambda c=c: c.train_step(images, masks)) for n, c in fast.items()},
        windows,
        steps,
    )
    for contender in fast.values():
        contender.model.eval()  # inference as the bench times it
    infer = alternate(
        {n: repeated(lambda c=c: c.infer(images)) for n, c in fast.items()}, windows, steps
    ).medians
    for contender in fast.values():
        contender.model.train()
    size = (image_size, image_size)
    rows = []
    for name, contender in fast.items():
        model = contender.model
        rows.append(
            {
                "variant": name,
                "params": count_params(model),
                "gflops_per_image": count_flops(model.config, size) / 1e9,
                **kv_costs(model, size),
                "activation_mb": activation_megabytes(contender, images),
                "train_step_s": train.medians[name],
                "train_images_per_s": batch_size / train.medians[name],
                "infer_images_per_s": batch_size / infer[name],
            }
        )
    base = rows[0]
    for row in rows:
        for key in ("params", "gflops_per_image", "kv_params", "kv_activations", "activation_mb"):
            row[f"{key}_ratio"] = row[key] / base[key] if base[key] else float("nan")
        row["train_time_ratio"] = train.ratio(row["variant"], base["variant"])
    return rows


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"batch {args.batch_size} x {args.image_size}x{args.image_size}, {args.threads} threads; "
        f"ratios against {rows[0]['variant']}"
    )
    print(
        f"{'variant':<14} {'params':>9} {'GFLOP/img':>9} {'KV params':>9} {'KV elems':>9} "
        f"{'act MB':>7} {'(x)':>5} {'train img/s':>11} {'(time x)':>8} {'infer img/s':>11}"
    )
    for r in rows:
        print(
            f"{r['variant']:<14} {r['params']:>9,} {r['gflops_per_image']:>9.3f} "
            f"{r['kv_params']:>9,} {r['kv_activations']:>9,} {r['activation_mb']:>7.1f} "
            f"{r['activation_mb_ratio']:>5.2f} {r['train_images_per_s']:>11.1f} "
            f"{r['train_time_ratio']:>8.2f} {r['infer_images_per_s']:>11.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--variants", default=VARIANTS, help=f"comma-separated (default {VARIANTS})"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    rows = measure(names, args.batch_size, args.image_size, args.windows, args.steps)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, args)


if __name__ == "__main__":
    main()
