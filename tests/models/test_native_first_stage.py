"""latentseg's native first-stage kernel (``first_stage.c``, the fast path's training on AVX2
CPUs): relu(max_pool2d(conv3x3(x))) with the same outputs and, to float32 rounding, the same
weight and bias gradients as PyTorch's ops, ties and the ReLU included (the whole fast model
against the reference: tests/models/test_conv_weight_grad.py); the kernel keeps no
full-resolution activation; and where the kernel cannot be built, training runs on
PyTorch's ops and says why."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

from latentseg.models import encoder, native
from tests.conftest import subprocess_env

CPU = torch.device("cpu")

pytestmark = pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512") or native.kernel() is None,
    reason=f"the native kernel needs an x86-64 CPU with AVX2 and a C compiler: {native.status()}",
)


def stage_grads(conv, x, grad, native_on: bool, monkeypatch):
    monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", native_on)
    conv.zero_grad(set_to_none=True)
    out = encoder.first_stage(conv, x)
    assert (type(out.grad_fn).__name__ == "_NativeFirstStageBackward") == native_on
    out.backward(grad)
    bias = conv.bias.grad.clone() if conv.bias is not None else None
    return out.detach(), conv.weight.grad.clone(), bias


@pytest.mark.parametrize(
    ("batch", "in_channels", "channels", "size", "bias", "threads"),
    [
        (4, 3, 32, 64, True, 2),  # the tutorial's shapes, smaller
        (3, 1, 12, 70, True, 2),  # grayscale; 35 pooled columns (blocks of 16 and a rest);
        # channels not a multiple of 8 (nor 16: oneDNN's convolution, then the kernel's
        # pooling); 3 images over 2 threads
        (2, 2, 16, 6, False, 1),  # tiny, no bias, one thread
        (1, 3, 5, 2, True, 2),  # one 2x2 image, more threads than images, channels < 8
    ],
)
def test_native_first_stage_equals_pytorchs_ops_ties_and_relu_included(
    batch, in_channels, channels, size, bias, threads, monkeypatch
):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels, size, size, generator=gen)
    x[:, :, : size // 2, : size // 2] = 0.25  # a flat region: every window there ties
    # below it, each pair of columns is equal, so that the channels that see only the
    # centre tap tie within their windows where the inputs' patches differ: the tie must go
    # to the first input of the window (max_pool2d's rule) for the other taps' gradients
    x[:, :, size // 2 :, 1::2] = x[:, :, size // 2 :, 0::2]
    x = x.contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(in_channels, channels, 3, padding=1, bias=bias)
    with torch.no_grad():  # weights large enough for the ReLU to cut some pooled outputs
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        centre_only = conv.weight[: channels // 2]
        centre_only[..., :, [0, 2]] = 0
        centre_only[..., [0, 2], 1] = 0
    conv = conv.to(memory_format=torch.channels_last)
    grad = torch.randn(batch, channels, size // 2, size // 2, generator=gen)
    grad = grad.contiguous(memory_format=torch.channels_last)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        expected = stage_grads(conv, x, grad, False, monkeypatch)
        got = stage_grads(conv, x, grad, True, monkeypatch)
    finally:
        torch.set_num_threads(torch_threads)
    if expected[0].numel() >= 100:  # some outputs are cut by the ReLU
        assert 0.05 < (expected[0] == 0).float().mean() < 0.8
    # the same maxima to float32 rounding (the kernel's own convolution sums in another
    # order than oneDNN's, at multiples of 16 channels), and the ReLU's zeros
    assert torch.equal(got[0] == 0, expected[0] == 0)
    assert (got[0] - expected[0]).abs().max() <= 1e-6 * expected[0].abs().max()
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    for want, have in zip(expected[1:], got[1:], strict=True):
        if want is None:
            assert have is None
            continue
        assert have.shape == want.shape and have.stride() == want.stride()
        # float32 rounding of sums over batch x size^2 / 4 products, in another order; a tie
        # given to another input of its window would be off by a whole product
        assert (have - want).abs().max() <= 1e-5 * want.abs().max()


def test_the_native_stage_keeps_no_full_resolution_activation(monkeypatch):
    monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", True)
    conv = torch.nn.Conv2d(3, 32, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    out = encoder.first_stage(conv, x)
    saved = out.grad_fn.saved_tensors
    full_resolution = 2 * 32 * 64 * 64 * 4  # the convolution's float32 output, in bytes
    held = sum(t.numel() * t.element_size() for t in saved if t is not x)
    assert held == full_resolution // 16  # one byte per pooled output: its window's winner


def test_the_native_stage_is_the_default_on_avx2_and_avx512_for_large_batches_only(monkeypatch):
    monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", None)  # AVX2 or AVX-512: the module's skip
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    large = torch.randn(4, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    small = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    native_node = "_NativeFirstStageBackward"
    assert type(encoder.first_stage(conv, large).grad_fn).__name__ == native_node
    assert type(encoder.first_stage(conv, small).grad_fn).__name__ != native_node
    status = encoder.native_first_stage_status()
    assert status == "on"
    monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", True)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    assert type(encoder.first_stage(conv, x).grad_fn).__name__ == native_node
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(encoder.first_stage(conv, x).grad_fn).__name__ != native_node
    odd = torch.randn(2, 3, 9, 8).contiguous(memory_format=torch.channels_last)
    four = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    wide = torch.nn.Conv2d(4, 4, 3, padding=1)
    needs_grad = x.clone().requires_grad_()
    for stage in (
        encoder.first_stage(conv, odd),  # odd height
        encoder.first_stage(wide, four),  # 4 input channels
        encoder.first_stage(conv, needs_grad),  # an input that needs its own gradient
        encoder.first_stage(conv, x.contiguous()),  # NCHW
    ):
        assert type(stage.grad_fn).__name__ != native_node


@pytest.mark.parametrize("channels", [32, 12])  # the kernel's convolution; oneDNN's
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_inference_through_the_native_stage_gives_pytorchs_values(channels, mode, monkeypatch):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 20, 18, generator=gen).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(3, channels, 3, padding=1).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = F.relu(F.max_pool2d(conv(x), 2))
    monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", True)
    with getattr(torch, mode)():
        got = encoder.first_stage(conv, x)
    assert got.grad_fn is None and got.shape == expected.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()
    assert torch.equal(got == 0, expected == 0)


def aten_ops(run) -> tuple[torch.Tensor, dict[str, int]]:
    """``run()``'s result and how many times it called each op (torch's profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = run()
    return out, {event.key: event.count for event in prof.key_averages()}


def pooling_input(channels: int = 24) -> torch.Tensor:
    """A second stage's convolution output: ties (a flat region of equal values, and equal
    pairs in every window's first row), negatives the ReLU cuts, and NaN, which max_pool2d and
    relu propagate; 24 channels (three 8-wide vectors) or a number with a scalar rest."""
    gen = torch.Generator().manual_seed(5)
    y = torch.randn(3, channels, 10, 12, generator=gen)
    y[:, :, :4, :4] = 0.5
    y[:, :, 6, 1::2] = y[:, :, 6, 0::2]
    y[:, :3, 4:6] = -1.0
    y[0, 5, 7, 3] = float("nan")
    y[1, channels - 1, 0, 11] = float("nan")
    return y.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("native_on", [True, False])
def test_the_second_stage_pools_natively_at_inference_with_pytorchs_values(native_on, monkeypatch):
    y = pooling_input()
    expected = F.relu(F.max_pool2d(y, 2))
    monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", native_on)
    with torch.inference_mode():
        got, ops = aten_ops(lambda: encoder.pool_relu(y))
    assert ("aten::maximum" not in ops) == native_on  # the kernel, not two elementwise maxima
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.isnan(), expected.isnan()) and expected.isnan().sum() == 2
    assert torch.equal(got.nan_to_num(7.0), expected.nan_to_num(7.0))
    with torch.inference_mode():  # NCHW input: PyTorch's ops, the same values
        nchw, ops = aten_ops(lambda: encoder.pool_relu(y.contiguous()))
    assert "aten::max_pool2d" in ops
    assert torch.equal(nchw.nan_to_num(7.0), expected.nan_to_num(7.0))


@pytest.mark.parametrize("channels", [24, 13])
def test_the_native_pooling_trains_with_max_pool2ds_gradients_ties_and_nan_included(
    channels, monkeypatch
):
    y = pooling_input(channels)
    gen = torch.Generator().manual_seed(6)
    grad = torch.randn(3, channels, 5, 6, generator=gen)
    reference = y.clone().requires_grad_()
    expected = F.relu(F.max_pool2d(reference, 2))
    expected.backward(grad)
    monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", True)
    leaf = y.clone().requires_grad_()
    got = encoder.pool_relu(leaf)
    assert type(got.grad_fn).__name__ == "_NativePoolReluBackward"
    got.backward(grad)
    assert torch.equal(got.detach().nan_to_num(7.0), expected.detach().nan_to_num(7.0))
    # each window's gradient went to the same input as max_pool2d's (the first maximum, NaN
    # first), zero where the ReLU cut: bit for bit
    assert leaf.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(leaf.grad, reference.grad)
    assert (reference.grad != 0).sum() > 100


def test_the_model_at_inference_pools_natively_by_default_for_large_batches(monkeypatch):
    from latentseg.models import create_model
    from latentseg.train.fastpath import prepare_model, to_device

    monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", None)
    model = prepare_model(create_model("tutorial", num_classes=4, in_channels=3), CPU).eval()
    images = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got, ops = aten_ops(lambda: model(to_device(images, CPU)))
        monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", False)
        expected, plain_ops = aten_ops(lambda: model(to_device(images, CPU)))
    # the first stage's convolution and the second stage's pooling are the kernel's
    assert "aten::maximum" in plain_ops and "aten::maximum" not in ops
    assert "aten::max_pool2d" not in ops
    assert plain_ops["aten::mkldnn_convolution"] == 2 and ops["aten::mkldnn_convolution"] == 1
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_an_empty_batch_gives_empty_outputs_and_zero_gradients(monkeypatch):
    monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", True)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1).to(memory_format=torch.channels_last)
    empty = torch.randn(0, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    out = encoder.first_stage(conv, empty)
    assert out.shape == (0, 16, 4, 4)
    out.sum().backward()
    assert not conv.weight.grad.any() and not conv.bias.grad.any()


RUN_STAGE = """
import torch
from latentseg.models import encoder, native
encoder.NATIVE_FIRST_STAGE = True
conv = torch.nn.Conv2d(3, 8, 3, padding=1)
x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
out = encoder.first_stage(conv, x)
out.sum().backward()
assert conv.weight.grad is not None
print(native.status(), "|", type(out.grad_fn).__name__)
"""


def run_stage(tmp_path, **environ):
    env = {**subprocess_env(), "LATENTSEG_CACHE_DIR": str(tmp_path / "cache"), **environ}
    done = subprocess.run(
        [sys.executable, "-c", RUN_STAGE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    status, node = done.stdout.strip().split(" | ")
    return status, node


@pytest.mark.slow
def test_without_a_compiler_training_runs_on_pytorchs_ops_and_says_why(tmp_path):
    status, node = run_stage(tmp_path, CC=str(tmp_path / "no-such-cc"))
    assert status.startswith("off (") and "no-such-cc" in status
    assert node != "_NativeFirstStageBackward"
    status, node = run_stage(tmp_path, LATENTSEG_NATIVE="0")
    assert (status, node != "_NativeFirstStageBackward") == ("off (LATENTSEG_NATIVE=0)", True)


@pytest.mark.slow
def test_workers_building_the_kernel_at_once_each_load_a_whole_one(tmp_path):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run_stage(tmp_path), range(4)))
    assert results == [("on", "_NativeFirstStageBackward")] * 4
    built = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(built) == 1 and built[0].endswith(".so")  # no partial files left behind
