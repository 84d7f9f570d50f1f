"""The fast training path, shared by ``fit`` and ``latentseg bench`` so that the benchmark
measures exactly what training runs.

Same model, same numbers (float32; a test compares it with the reference), less time:

- channels_last (NHWC) memory for the encoder's convolutions and poolings, and the token
  view of the features taken without a copy;
- scaled-dot-product attention without materialising attention weights (``attention_impl:
  fused``; weights only for plots and diagnostics);
- Adam/AdamW with the fused kernel (one pass over all parameters) where torch has one;
- optional bf16 autocast (``train.bf16``) where the device supports it;
- host memory that is reused, not returned to the OS and faulted in again every step
  (:func:`keep_freed_memory`), and transparent huge pages (both by ``latentseg.tune_process``, which the CLI calls).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch
from torch import nn

from latentseg.config import OptimConfig


def channels_last(device: torch.device) -> bool:
    """NHWC pays off for convolutions on CPU (oneDNN) and CUDA; not on MPS."""
    return device.type in ("cpu", "cuda")


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc's mallopt parameters
_malloc_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (no ``mmap`` per large block, no
    trimming), once per process; True when it is in effect.

    A training step allocates and frees the same large activations every step. By default
    glibc maps each block over 32 MB afresh and unmaps it when freed, so every step pays for
    page faults and the kernel zeroing every page again: measured, a fresh 64 MB
    ``torch.zeros`` costs 16-36 ms against 2 ms when the memory is reused, and at batch 32
    this was a third of the tutorial model's step. The process keeps its peak memory
    (what a training step needs anyway). ``LATENTSEG_MALLOC_TUNING=0`` turns it off; other
    C libraries are left alone.
    """
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        if os.environ.get("LATENTSEG_MALLOC_TUNING", "1") != "0":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _malloc_tuned = all(
                mallopt(param, value)
                for param, value in (
                    (_M_MMAP_MAX, 0),
                    (_M_TRIM_THRESHOLD, 2**31 - 1),
                    (_M_TOP_PAD, 64 << 20),
                )
            )
    return _malloc_tuned


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on ``device`` in the fast path's memory layout. (The host allocator is the
    caller's: the CLI opts in with ``latentseg.tune_process``.)"""
    if channels_last(device):
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    if channels_last(device):
        return images.to(device, memory_format=torch.channels_last, non_blocking=True)
    return images.to(device, non_blocking=True)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def build_optimizer(
    model: nn.Module, optim: OptimConfig, fused: bool = True
) -> torch.optim.Optimizer:
    """Adam or AdamW; ``fused`` uses torch's single-kernel implementation where available."""
    optimizer_class = torch.optim.AdamW if optim.name == "adamw" else torch.optim.Adam
    settings = {"lr": optim.lr, "betas": optim.betas, "weight_decay": optim.weight_decay}
    if fused:
        try:
            return optimizer_class(model.parameters(), fused=True, **settings)
        except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device/dtype
            pass
    return optimizer_class(model.parameters(), **settings)
