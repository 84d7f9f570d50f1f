"""Data generation vs a training step, measured side by side in one run.

    .venv/bin/python benchmarks/data_generation.py [--variant tutorial] [--batch-size 16] [--threads 2]

The same measurement as `latentseg bench --only data`, for any variant and batch: alternates
(a) one training step of the model on latentseg's fast path (as `latentseg train` runs it),
(b) generating a fresh batch of `shapes` (uncached), (c) reading a training batch from the
in-memory cache, over several timed windows after a warm-up; prints the medians and the
ratios (b)/(a) and (c)/(a).
"""

from __future__ import annotations

import argparse

import torch

from latentseg.bench.overheads import bench_data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="tutorial")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    figures = bench_data(args.batch_size, args.image_size, args.windows, args.steps, args.variant)
    print(
        f"{args.variant}, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
        f"{args.threads} threads; medians over {args.windows} windows of {args.steps}"
    )
    print(f"  training step       {figures['train_step_ms']:8.2f} ms")
    print(
        f"  generate (uncached) {figures['generate_ms']:8.2f} ms   "
        f"ratio {figures['generate_share_of_step']:.3f} of a step"
    )
    print(
        f"  read (cached)       {figures['read_cached_ms']:8.2f} ms   "
        f"ratio {figures['read_share_of_step']:.4f} of a step"
    )


if __name__ == "__main__":
    main()
