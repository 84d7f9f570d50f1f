"""``latentseg bench``: its sections, run in order, each printing its line as it ends; the
whole result is one JSON-ready dict (``latentseg bench --json``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from latentseg.bench import machine
from latentseg.bench.model_speed import bench_variant, format_model_row
from latentseg.bench.overheads import (
    bench_bf16_accuracy,
    bench_data,
    bench_report,
    bench_study,
    bench_tracking,
    format_bf16_accuracy,
    format_data,
    format_report,
    format_study,
    format_tracking,
)
from latentseg.train.fastpath import bf16_supported

SECTIONS = ("models", "data", "tracking", "study", "report", "bf16")


def run_bench(
    variants: list[str],
    batch_size: int = 32,
    image_size: int = 128,
    threads: int | None = None,
    windows: int = 5,
    steps: int = 5,
    sections: tuple[str, ...] = SECTIONS,
    report_runs: tuple[int, ...] = (1000,),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the bench's ``sections`` (of :data:`SECTIONS`, in that order) on ``threads``
    torch threads (default: torch's), printing a line per figure through ``log``. Returns
    ``machine`` and ``settings``, then one entry per section run: ``models`` (a row per
    variant), ``data``, ``tracking``, ``study``, ``report`` (a row per count of
    ``report_runs``) and ``bf16_accuracy`` (where this CPU has bf16)."""
    if threads:
        torch.set_num_threads(threads)
    gflops = machine.matmul_gflops()
    bf16 = bf16_supported(torch.device("cpu"))
    result: dict[str, Any] = {
        "machine": machine.describe(gflops, bf16),
        "settings": {
            "batch_size": batch_size,
            "image_size": image_size,
            "windows": windows,
            "steps": steps,
        },
    }
    log(
        f"{torch.get_num_threads()} threads, {result['machine']['cpu_capability']}, "
        f"fp32 matmul {gflops:.0f} GFLOP/s; batch {batch_size}, {image_size}x{image_size}, "
        f"medians of {windows} alternating windows of {steps} steps"
    )

    def logged(figures: Any, line: Callable[[Any], str]) -> Any:
        log(line(figures))
        return figures

    if "models" in sections:
        result["models"] = []
        for variant in variants:
            row = bench_variant(variant, batch_size, image_size, windows, steps, gflops, bf16)
            result["models"].append(logged(row, format_model_row))
    if "data" in sections:
        result["data"] = logged(bench_data(16, 64, windows, steps), format_data)
    if "tracking" in sections:
        result["tracking"] = logged(bench_tracking(), format_tracking)
    if "study" in sections:
        result["study"] = logged(bench_study(), format_study)
    if "report" in sections:
        result["report"] = [logged(bench_report(runs), format_report) for runs in report_runs]
    if "bf16" in sections and bf16:
        result["bf16_accuracy"] = logged(bench_bf16_accuracy(), format_bf16_accuracy)
    return result
