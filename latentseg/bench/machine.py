"""The machine a benchmark ran on: its instruction set and its fp32 matmul speed, the
yardsticks that make figures from different machines comparable."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch

from latentseg.bench.harness import repeated


def cpu_isa() -> str:
    """``AVX-512`` or ``AVX2`` from ``/proc/cpuinfo``; the machine's architecture where the
    file is missing or names neither."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else platform.machine()


def matmul_gflops(sizes: tuple[int, ...] = (512, 1024, 2048), seconds: float = 0.6) -> float:
    """The machine's fp32 matmul speed with the current thread count (GFLOP/s): the best
    window over a few square sizes, so that one unlucky size or a busy moment does not set it."""
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        multiply = repeated(lambda a=a, b=b: a @ b)
        multiply(1)  # warm-up
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            best = max(best, 2 * 2 * size**3 / multiply(2) / 1e9)
    return best


def describe(matmul: float, bf16: bool) -> dict[str, Any]:
    """The ``machine`` record of a bench result: CPU, the ISA torch dispatches to, threads,
    torch's version, its measured matmul speed (:func:`matmul_gflops`) and bf16 support."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "matmul_gflops": matmul,
        "bf16": bf16,
    }
