"""The data section: reading and generating a batch against a training step."""

from __future__ import annotations

from typing import Any

import torch

from latentseg.bench.harness import alternate, repeated
from latentseg.bench.machine import synchronizer
from latentseg.bench.model_speed import contenders


def bench_data(
    batch_size: int,
    image_size: int,
    windows: int,
    steps: int,
    variant: str = "deep-residual",
    device: str = "cpu",
) -> dict[str, Any]:
    """Reading a batch of ``shapes`` (cached, as training does) and generating one fresh,
    against one fast training step of ``variant`` on that batch on ``device``, alternated."""
    from latentseg.data import SplitSizes, create_dataset

    dataset = create_dataset(
        "shapes",
        split_sizes=SplitSizes(train=batch_size * steps, val=1, test=1),
        image_size=image_size,
    )
    split = dataset.split("train")
    split.get_batch([0])  # fills the cache
    impl = contenders(variant, False, torch.device(device))["fast"]
    images, masks = (t.to(device) for t in split.get_batch(list(range(batch_size))))
    indices = list(range(batch_size))
    synchronize = synchronizer(torch.device(device))
    median = alternate(
        {
            "train_step": repeated(lambda: impl.train_step(images, masks), synchronize),
            "read_cached": repeated(lambda: split.train_batch(indices, seed=1)),
            "generate": repeated(lambda: dataset.generate(range(10_000, 10_000 + batch_size))),
        },
        windows,
        steps,
    ).medians
    return {
        "variant": variant,
        "train_step_ms": median["train_step"] * 1e3,
        "read_cached_ms": median["read_cached"] * 1e3,
        "generate_ms": median["generate"] * 1e3,
        "read_share_of_step": median["read_cached"] / median["train_step"],
        "generate_share_of_step": median["generate"] / median["train_step"],
    }


def format_data(figures: dict[str, Any]) -> str:
    return (
        f"data: cached batch {figures['read_cached_ms']:.2f} ms = "
        f"{100 * figures['read_share_of_step']:.1f}% of a training step "
        f"({figures['train_step_ms']:.0f} ms); fresh generation "
        f"{100 * figures['generate_share_of_step']:.1f}%"
    )
