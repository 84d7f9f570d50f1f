"""Data generation vs a training step, measured side by side in one run.

    .venv/bin/python benchmarks/data_generation.py [--variant tutorial] [--batch-size 16] [--threads 2]

Alternates (a) one training step of the model, (b) generating a fresh batch of `shapes`
(uncached), (c) reading a batch from the in-memory cache, over several timed windows after a
warm-up; prints the medians and the ratios (b)/(a) and (c)/(a).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from latentseg.data import SplitSizes, create_dataset
from latentseg.models import create_model


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

    batch = args.batch_size
    dataset = create_dataset(
        "shapes",
        split_sizes=SplitSizes(train=batch * args.steps, val=1, test=1),
        image_size=args.image_size,
    )
    split = dataset.split("train")
    model = create_model(args.variant, num_classes=dataset.info.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, masks = split.get_batch(list(range(batch)))  # fills the cache
    target = masks if model.config.output == "full" else masks[:, 2::4, 2::4]

    def train_step() -> None:
        loss = torch.nn.functional.cross_entropy(model(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def generate() -> None:
        dataset.generate(range(1000, 1000 + batch))

    def cached() -> None:
        split.get_batch(list(range(batch)))

    timings: dict[str, list[float]] = {"train_step": [], "generate": [], "cached": []}
    for fn in (train_step, generate, cached):  # warm-up
        for _ in range(3):
            fn()
    for _ in range(args.windows):
        for name, fn in (("train_step", train_step), ("generate", generate), ("cached", cached)):
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            timings[name].append((time.perf_counter() - start) / args.steps)
    med = {k: statistics.median(v) for k, v in timings.items()}
    print(
        f"{args.variant}, batch {batch}, {args.image_size}x{args.image_size}, {args.threads} threads; medians over {args.windows} windows of {args.steps}"
    )
    print(f"  training step       {med['train_step'] * 1e3:8.2f} ms")
    print(
        f"  generate (uncached) {med['generate'] * 1e3:8.2f} ms   ratio {med['generate'] / med['train_step']:.3f} of a step"
    )
    print(
        f"  read (cached)       {med['cached'] * 1e3:8.2f} ms   ratio {med['cached'] / med['train_step']:.4f} of a step"
    )


if __name__ == "__main__":
    main()
