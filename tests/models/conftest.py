"""The ``device`` the agreement tests of the fast path against the reference run on: the CPU
everywhere, and a CUDA GPU where there is one (``benchmarks/gpu_check.sh`` runs those cases,
``-k cuda``); on a machine without one they skip and say why."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

NO_CUDA = "no CUDA device here; benchmarks/gpu_check.sh runs these cases on a GPU"


@pytest.fixture(
    params=[
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
        ),
    ]  # fmt: skip
)
def device(request) -> Iterator[torch.device]:
    """The test's device, in float32 arithmetic on both. On CUDA, TF32 is off for the test:
    PyTorch runs cuDNN convolutions in TF32 by default (10-bit mantissa, about 1e-3
    relative), the same for both implementations but with different kernels for NCHW and
    channels_last, which would hide a real disagreement under its rounding. With TF32 off
    the float32 tolerances hold on both devices (bf16's are stated where it is tested)."""
    if request.param == "cpu":
        yield torch.device("cpu")
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield torch.device("cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
