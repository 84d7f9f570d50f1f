"""The bf16 section: what bf16 autocast costs in accuracy on a short training run."""

from __future__ import annotations

from typing import Any

from latentseg.bench.harness import stopwatch
from latentseg.bench.overheads.runs import small_run_config


def bench_bf16_accuracy(epochs: int = 4, device: str = "cpu") -> dict[str, Any]:
    """The same short training run on ``device`` in float32 and with bf16 autocast: val mIoU
    and time of each (bf16 is opt-in, ``train.bf16``; this is what it costs in accuracy)."""
    from latentseg.config import ExperimentConfig
    from latentseg.tracking.run import run_experiment

    out: dict[str, Any] = {"epochs": epochs}
    for name, bf16 in (("float32", False), ("bf16", True)):
        config = small_run_config(epochs, tracking=False, device=device)
        config["train"]["bf16"] = bf16
        with stopwatch() as elapsed:
            result = run_experiment(ExperimentConfig.model_validate(config), progress=False)
        out[f"{name}_val_miou"] = result.summary["best_val_miou"]
        out[f"{name}_s"] = elapsed.wall_s
    out["miou_difference"] = out["bf16_val_miou"] - out["float32_val_miou"]
    return out


def format_bf16_accuracy(figures: dict[str, Any]) -> str:
    return (
        f"bf16 accuracy: val mIoU {figures['bf16_val_miou']:.4f} vs float32 "
        f"{figures['float32_val_miou']:.4f} ({figures['miou_difference']:+.4f}) after "
        f"{figures['epochs']} epochs; {figures['bf16_s']:.0f} s vs {figures['float32_s']:.0f} s"
    )
