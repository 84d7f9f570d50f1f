"""What the overhead sections run: a scratch folder for a benchmark's store, journal and
checkpoints, and the training runs they time (the demo study's trial, the README's run)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A temporary folder for a benchmark's store, journal and checkpoints."""
    with tempfile.TemporaryDirectory(prefix="latentseg-bench-") as tmp:
        yield Path(tmp)


def small_run_config(epochs: int, tracking: bool, device: str = "cpu") -> dict[str, Any]:
    """A training run like the demo study's trials (``studies/quick.yaml``), on ``device``."""
    return {
        "model": {"variant": "deep-residual"},
        "data": {
            "dataset": "shapes",
            "params": {"image_size": 48},
            "batch_size": 16,
            "train_size": 1024,
            "val_size": 256,
            "test_size": 256,
        },
        "optim": {"name": "adamw", "lr": 2e-3, "schedule": "cosine", "warmup_steps": 50},
        "train": {"epochs": epochs, "seed": 1, "device": device},
        "tracking": {"experiment": "bench", "enabled": tracking, "log_model": False},
    }


def tracking_run_config(epochs: int, tracking: bool, device: str = "cpu") -> dict[str, Any]:
    """``experiments/shapes.yaml``'s run (the README's headline result), on half its training
    images and fewer epochs so that the benchmark takes minutes."""
    config = small_run_config(epochs, tracking, device)
    config["data"].update({"params": {"image_size": 64}, "train_size": 2048})
    return config
