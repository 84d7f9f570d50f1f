"""The machine a benchmark ran on: its instruction set (or its GPU) and its fp32 matmul
speed, the yardsticks that make figures from different machines comparable."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from latentseg.bench.harness import repeated
from latentseg.models.encoder import native_first_stage_status

CPU = torch.device("cpu")


def cpu_isa() -> str:
    """``AVX-512`` or ``AVX2`` from ``/proc/cpuinfo``; the machine's architecture where the
    file is missing or names neither."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else platform.machine()


def synchronizer(device: torch.device) -> Callable[[], None] | None:
    """What waits for ``device``'s queued work (:func:`~latentseg.bench.harness.repeated`'s
    ``synchronize``): ``torch.cuda.synchronize`` on CUDA; None where work runs as it is
    called (the CPU)."""
    return torch.cuda.synchronize if device.type == "cuda" else None


def matmul_gflops(
    sizes: tuple[int, ...] | None = None, seconds: float = 0.6, device: torch.device = CPU
) -> float:
    """The fp32 matmul speed of ``device`` (the CPU with the current thread count; CUDA with
    torch's default of no TF32 for matmuls) in GFLOP/s: the best window over a few square
    sizes (default 512 to 2048 on a CPU, 2048 to 8192 on a GPU, which small ones leave
    idle), so that one unlucky size or a busy moment does not set it."""
    if sizes is None:
        sizes = (2048, 4096, 8192) if device.type == "cuda" else (512, 1024, 2048)
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
        multiply = repeated(lambda a=a, b=b: a @ b, synchronizer(device))
        multiply(1)  # warm-up
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            best = max(best, 2 * 2 * size**3 / multiply(2) / 1e9)
    return best


def describe(matmul: float, bf16: bool, device: torch.device = CPU) -> dict[str, Any]:
    """The ``machine`` record of a bench result: CPU, the ISA torch dispatches to, threads,
    torch's version, the device the models ran on (with the GPU's name on CUDA), its
    measured matmul speed (:func:`matmul_gflops`), bf16 support and whether latentseg's native
    CPU kernel is in use (:func:`~latentseg.models.encoder.native_first_stage_status`)."""
    record = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device.type,
        "matmul_gflops": matmul,
        "bf16": bf16,
        "native_kernel": (
            native_first_stage_status() if device.type == "cpu" else "off (CPU only)"
        ),
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
    return record
