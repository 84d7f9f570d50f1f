"""``latentseg bench``: its sections, run in order, each printing its line as it ends; the
whole result is one JSON-ready dict (``latentseg bench --json``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from latentseg.bench import machine
from latentseg.bench.model_speed import bench_variant, format_model_row
from latentseg.bench.overheads import (
    REPORT_SIZES,
    STUDY_SIZES,
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
    report_runs: tuple[int, ...] = REPORT_SIZES,
    log: Callable[[str], None] = print,
    device: str = "cpu",
    study_trials: tuple[int, ...] = STUDY_SIZES,
    postgres: str | None = None,
) -> dict[str, Any]:
    """Run the bench's ``sections`` (of :data:`SECTIONS`, in that order) on ``threads``
    torch threads (default: torch's), the models on ``device`` (``cpu`` or ``cuda``),
    printing a line per figure through ``log``. Returns ``machine`` and ``settings``, then
    one entry per section run: ``models`` (a row per variant), ``data``, ``tracking``,
    ``study`` (a row per count of ``study_trials``, on the journal, then on PostgreSQL given
    a ``postgres`` server URL), ``report`` (a row per count of ``report_runs``) and
    ``bf16_accuracy`` (where the device has bf16)."""
    if threads:
        torch.set_num_threads(threads)
    on = torch.device(device)
    gflops = machine.matmul_gflops(device=on)
    bf16 = bf16_supported(on)
    result: dict[str, Any] = {
        "machine": machine.describe(gflops, bf16, on),
        "settings": {
            "batch_size": batch_size,
            "image_size": image_size,
            "windows": windows,
            "steps": steps,
        },
    }
    described = result["machine"]
    runs_on = (
        f"{described['gpu']} (CUDA {described['cuda']})"
        if on.type == "cuda"
        else f"{described['cpu_capability']} (native kernel {described['native_kernel']})"
    )
    log(
        f"{torch.get_num_threads()} threads, {runs_on}, "
        f"fp32 matmul {gflops:.0f} GFLOP/s; batch {batch_size}, {image_size}x{image_size}, "
        f"medians of {windows} alternating windows of {steps} steps"
    )

    def logged(figures: Any, line: Callable[[Any], str]) -> Any:
        log(line(figures))
        return figures

    if "models" in sections:
        result["models"] = []
        for variant in variants:
            row = bench_variant(variant, batch_size, image_size, windows, steps, gflops, bf16, on)
            result["models"].append(logged(row, format_model_row))
    if "data" in sections:
        figures = bench_data(16, 64, windows, steps, device=device)
        result["data"] = logged(figures, format_data)
    if "tracking" in sections:
        result["tracking"] = logged(bench_tracking(device=device), format_tracking)
    if "study" in sections:
        result["study"] = bench_study(
            study_trials, postgres, device=device, log=lambda row: log(format_study(row))
        )
    if "report" in sections:
        result["report"] = [logged(bench_report(runs), format_report) for runs in report_runs]
    if "bf16" in sections and bf16:
        figures = bench_bf16_accuracy(device=device)
        result["bf16_accuracy"] = logged(figures, format_bf16_accuracy)
    return result
