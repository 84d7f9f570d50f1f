"""latentseg's native first-stage kernel (``first_stage.c``, the fast path's training on AVX2
CPUs): relu(max_pool2d(conv3x3(x))) with the same outputs and, to float32 rounding, the same
weight and bias gradients as PyTorch's ops, ties and the ReLU included (the whole fast model
against the reference: tests/models/test_conv_weight_grad.py); the kernel keeps no
full-resolution activation; and where the kernel cannot be built, training runs on
PyTorch's ops and says why: it loads only a library this user built in a folder of theirs,
and any failure to build or load it (or another OpenMP runtime in the process) falls back."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from latentseg.models import encoder, native
from tests.conftest import subprocess_env

CPU = torch.device("cpu")
X86_64 = platform.machine().lower() in ("x86_64", "amd64")
COMPILER = shutil.which("cc") or shutil.which("gcc")

# the kernel's own tests; those of its fallbacks run everywhere, a compiler or not
needs_kernel = pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512") or native.kernel() is None,
    reason=f"the native kernel needs an x86-64 CPU with AVX2 and a C compiler: {native.status()}",
)
needs_compiler = pytest.mark.skipif(
    COMPILER is None or not X86_64, reason="needs an x86-64 machine with a C compiler"
)


def stage_grads(conv, x, grad, native_on: bool, monkeypatch):
    monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", native_on)
    conv.zero_grad(set_to_none=True)
    out = encoder.first_stage(conv, x)
    assert (type(out.grad_fn).__name__ == "_NativeFirstStageBackward") == native_on
    out.backward(grad)
    bias = conv.bias.grad.clone() if conv.bias is not None else None
    return out.detach(), conv.weight.grad.clone(), bias


@needs_kernel
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


@needs_kernel
def test_the_native_stage_keeps_no_full_resolution_activation(monkeypatch):
    monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", True)
    conv = torch.nn.Conv2d(3, 32, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    out = encoder.first_stage(conv, x)
    saved = out.grad_fn.saved_tensors
    full_resolution = 2 * 32 * 64 * 64 * 4  # the convolution's float32 output, in bytes
    held = sum(t.numel() * t.element_size() for t in saved if t is not x)
    assert held == full_resolution // 16  # one byte per pooled output: its window's winner


@needs_kernel
def test_the_native_stage_is_the_default_on_avx2_and_avx512_for_large_batches_only(monkeypatch):
    monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", None)  # AVX2 or AVX-512: needs_kernel
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


@needs_kernel
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


@needs_kernel
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


@needs_kernel
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


@needs_kernel
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


@needs_kernel
def test_an_empty_batch_gives_empty_outputs_and_zero_gradients(monkeypatch):
    monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", True)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1).to(memory_format=torch.channels_last)
    empty = torch.randn(0, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    out = encoder.first_stage(conv, empty)
    assert out.shape == (0, 16, 4, 4)
    out.sum().backward()
    assert not conv.weight.grad.any() and not conv.bias.grad.any()


def dyadic(shape, gen: torch.Generator) -> torch.Tensor:
    """Multiples of 1/8 in [-1, 1]: every sum of the stage's products is exact in float32, in
    any order (so the kernel and PyTorch's ops must agree bit for bit), and ties are common."""
    return torch.randint(-8, 9, shape, generator=gen).float() / 8


@contextlib.contextmanager
def native_first_stage(on: bool, threads: int):
    saved = encoder.NATIVE_FIRST_STAGE, torch.get_num_threads()
    encoder.NATIVE_FIRST_STAGE = on
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        encoder.NATIVE_FIRST_STAGE = saved[0]
        torch.set_num_threads(saved[1])


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    height=st.integers(1, 10).map(lambda half: 2 * half),
    # up to 20 pooled columns: a block of 16 and a rest
    width=st.integers(1, 20).map(lambda half: 2 * half),
    in_channels=st.integers(1, native.MAX_IN_CHANNELS),
    # multiples of 16: the kernel's convolution; others: oneDNN's, then the kernel's pooling
    channels=st.one_of(st.sampled_from([16, 32, 48]), st.integers(1, 40)),
    bias=st.booleans(),
    threads=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_fuzz_the_native_first_stage_against_pytorchs_ops(
    batch, height, width, in_channels, channels, bias, threads, seed
):
    gen = torch.Generator().manual_seed(seed)
    x = dyadic((batch, in_channels, height, width), gen).contiguous(
        memory_format=torch.channels_last
    )
    conv = torch.nn.Conv2d(in_channels, channels, 3, padding=1, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(dyadic(conv.weight.shape, gen))
        if bias:
            conv.bias.copy_(dyadic(conv.bias.shape, gen))
    conv = conv.to(memory_format=torch.channels_last)
    grad = dyadic((batch, channels, height // 2, width // 2), gen)
    expected = F.relu(F.max_pool2d(F.conv2d(x, conv.weight, conv.bias, padding=1), 2))
    expected.backward(grad)
    want = [expected.detach(), conv.weight.grad.clone()]
    want += [conv.bias.grad.clone()] if bias else []
    conv.zero_grad(set_to_none=True)
    with native_first_stage(True, threads):
        got = encoder.first_stage(conv, x)
        assert type(got.grad_fn).__name__ == "_NativeFirstStageBackward"
        got.backward(grad)
    have = [got.detach(), conv.weight.grad, *([conv.bias.grad] if bias else [])]
    for name, value, reference in zip(("output", "weight", "bias"), have, want, strict=False):
        assert torch.equal(value, reference), name
    with torch.no_grad(), native_first_stage(True, threads):
        assert torch.equal(encoder.first_stage(conv, x), want[0])  # inference, no window kept


@pytest.fixture
def fresh_kernel():
    """``native``'s answer asked afresh in this test (its environment is the test's), and
    again, as the rest of the session has it, after."""
    native._load.cache_clear()
    yield
    native._load.cache_clear()


def assert_pytorchs_ops_run_the_stage():
    """The first stage, asked for the kernel, runs on PyTorch's ops with their values."""
    gen = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8, generator=gen).contiguous(memory_format=torch.channels_last)
    with native_first_stage(True, 1):
        out = encoder.first_stage(conv, x)
    assert type(out.grad_fn).__name__ != "_NativeFirstStageBackward"
    out.sum().backward()
    assert conv.weight.grad is not None
    assert torch.equal(out, F.relu(F.max_pool2d(conv(x), 2)))


MAPS_LINE = "7f0000000000-7f0000001000 r-xp 00000000 08:01 1234 {}"


@pytest.mark.skipif(not X86_64, reason="the kernel is x86-64 code")
@pytest.mark.parametrize(
    "runtime",
    [
        "/opt/conda/lib/libiomp5.so",  # Intel's, as conda's MKL builds load it
        "/usr/lib/llvm-14/lib/libomp.so.5",  # LLVM's
        "/venv/lib/python3.11/site-packages/foo.libs/libomp-a1b2c3d4.so",  # a wheel's copy
    ],
)
def test_another_openmp_runtime_in_the_process_turns_the_kernel_off_and_says_why(
    runtime, tmp_path, monkeypatch, fresh_kernel
):
    maps = tmp_path / "maps"
    gomp = ".venv/lib/python3.11/site-packages/torch/lib/libgomp.so.1"
    maps.write_text("\n".join(MAPS_LINE.format(path) for path in (gomp, runtime, "[stack]")))
    monkeypatch.setattr(native, "PROC_MAPS", maps)
    assert native.status().startswith(f"off (another OpenMP runtime is loaded ({runtime})")
    assert_pytorchs_ops_run_the_stage()


def test_gnus_runtime_and_a_wheels_copy_of_it_are_not_another_runtime(tmp_path, monkeypatch):
    maps = tmp_path / "maps"
    lines = [
        "torch/lib/libgomp.so.1",
        "site-packages/scikit_learn.libs/libgomp-e985bcbb.so.1.0.0",  # loaded locally
        "/usr/lib/x86_64-linux-gnu/libompitrace.so",  # not an OpenMP runtime at all
        "/home/u/libomp dir/libc.so.6",
    ]
    maps.write_text("\n".join(MAPS_LINE.format(path) for path in lines))
    monkeypatch.setattr(native, "PROC_MAPS", maps)
    assert native.foreign_openmp_runtime() is None
    monkeypatch.setattr(native, "PROC_MAPS", tmp_path / "no-such-file")  # not Linux
    assert native.foreign_openmp_runtime() is None


@pytest.mark.skipif(not X86_64, reason="the kernel is x86-64 code")
def test_without_a_home_folder_the_kernel_falls_back_and_says_why(monkeypatch, fresh_kernel):
    def no_home():
        raise RuntimeError("Could not determine home directory.")

    for name in ("LATENTSEG_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert native.status() == "off (RuntimeError: Could not determine home directory.)"
    assert native.kernel() is None
    assert_pytorchs_ops_run_the_stage()


def another_user() -> int:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    return 65534  # nobody


@pytest.mark.skipif(not X86_64, reason="the kernel is x86-64 code")
@pytest.mark.parametrize("unsafe", ["world-writable", "group-writable", "another user's"])
def test_an_unsafe_cache_folder_is_refused_before_anything_is_built_in_it(
    unsafe, tmp_path, monkeypatch, fresh_kernel
):
    folder = tmp_path / "shared"
    folder.mkdir()
    if unsafe == "another user's":
        os.chown(folder, another_user(), -1)
        os.chmod(folder, 0o755)
        why = f"the cache folder {folder} belongs to uid 65534, not to this user"
    else:
        os.chmod(folder, 0o777 if unsafe == "world-writable" else 0o770)
        why = f"the cache folder {folder} is writable by group or others"
    monkeypatch.setenv("LATENTSEG_CACHE_DIR", str(folder))
    assert native.status().startswith(f"off ({why}")
    assert list(folder.iterdir()) == []
    assert_pytorchs_ops_run_the_stage()


@pytest.mark.skipif(not X86_64, reason="the kernel is x86-64 code")
def test_a_new_cache_folder_is_private(tmp_path, monkeypatch, fresh_kernel):
    folder = tmp_path / "made" / "latentseg"
    monkeypatch.setenv("LATENTSEG_CACHE_DIR", str(folder))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))  # nothing is built
    old = os.umask(0o002)  # a umask that leaves new folders group-writable
    try:
        native.status()
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o700


PLANTED = r"""
#include <stdio.h>
#include <stdlib.h>
/* a library another user planted: it runs code as soon as it is loaded */
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(getenv("PLANTED_MARKER"), "w");
    if (f) { fputs("ran", f); fclose(f); }
}
"""


def build_library(tmp_path, source: str, name: str) -> Path:
    (tmp_path / f"{name}.c").write_text(source)
    library = tmp_path / name
    done = subprocess.run(
        [COMPILER, "-shared", "-fPIC", str(tmp_path / f"{name}.c"), "-o", str(library)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return library


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize(
    "planted",
    ["in a world-writable folder", "group-writable", "another user's", "a symbolic link", "ours"],
)
def test_a_library_planted_in_the_cache_is_not_loaded(planted, tmp_path, monkeypatch, fresh_kernel):
    marker = tmp_path / "planted-ran"
    monkeypatch.setenv("PLANTED_MARKER", str(marker))
    library = build_library(tmp_path, PLANTED, "planted.so")
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("LATENTSEG_CACHE_DIR", str(folder))
    target = folder / native.library_name(native.find_compiler())  # the name of a real build
    if planted == "a symbolic link":
        target.symlink_to(library)
    else:
        shutil.copyfile(library, target)
        os.chmod(target, 0o775 if planted == "group-writable" else 0o755)
    if planted == "in a world-writable folder":
        os.chmod(folder, 0o777)
    if planted == "another user's":
        os.chown(target, another_user(), -1)
    status = native.status()
    if planted == "ours":
        # the control: the file, loaded, runs its code; without the kernel's functions it is
        # taken for a damaged build of ours and built again
        assert marker.read_text() == "ran" and status == "on"
        return
    assert not marker.exists(), "the planted library was loaded"
    assert status.startswith("off (") and native.kernel() is None
    assert {
        "in a world-writable folder": f"the cache folder {folder} is writable by group or others",
        "group-writable": f"the kernel {target} is writable by group or others",
        "another user's": f"the kernel {target} belongs to uid 65534",
        "a symbolic link": f"the kernel {target} is a symbolic link",
    }[planted] in status
    assert os.path.lexists(target)  # refused, and left for its owner to see
    assert_pytorchs_ops_run_the_stage()


RUN_STAGE = """
import torch
import torch.nn.functional as F
from latentseg.models import encoder, native
encoder.NATIVE_FIRST_STAGE = True
conv = torch.nn.Conv2d(3, 16, 3, padding=1).to(memory_format=torch.channels_last)
x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
out = encoder.first_stage(conv, x)
out.sum().backward()
assert conv.weight.grad is not None
assert (out - F.relu(F.max_pool2d(conv(x), 2))).abs().max() <= 1e-5
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
    assert status.startswith("off (") and node != "_NativeFirstStageBackward"
    if X86_64:
        assert "no-such-cc" in status
    no_compiler = {"PATH": str(tmp_path / "empty-path"), "CC": ""}  # neither cc nor gcc
    status, node = run_stage(tmp_path, **no_compiler)
    assert status.startswith("off (") and node != "_NativeFirstStageBackward"
    if X86_64:
        assert status == "off (no C compiler (cc, gcc or $CC))"
    status, node = run_stage(tmp_path, LATENTSEG_NATIVE="0")
    assert (status, node != "_NativeFirstStageBackward") == ("off (LATENTSEG_NATIVE=0)", True)


# a compiler that answers --version with bytes that are not text, and builds what it is asked
# to with the machine's compiler, or builds a library without the kernel's functions, or fails
FAKE_CC = """#!/bin/sh
if [ "$1" = --version ]; then printf 'fake cc \377\376\n'; exit 0; fi
case "$FAKE_CC_BUILDS" in
    kernel) exec {compiler} "$@" ;;
    empty) while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
           exec {compiler} -shared -fPIC -x c /dev/null -o "$out" ;;
    *) echo "first_stage.c:1: error: broken compiler" >&2; exit 1 ;;
esac
"""


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize(
    ("builds", "expected"),
    [
        ("kernel", "on"),  # a banner that is not text is no error
        ("empty", "off (AttributeError: "),  # a library without the kernel's functions
        ("error", "could not build first_stage.c: first_stage.c:1: error: broken compiler)"),
    ],
)
def test_every_failure_to_build_or_load_falls_back_with_its_reason(builds, expected, tmp_path):
    fake = tmp_path / "fake-cc"
    fake.write_text(FAKE_CC.format(compiler=COMPILER))
    fake.chmod(0o755)
    status, node = run_stage(tmp_path, CC=str(fake), FAKE_CC_BUILDS=builds)
    assert expected in status and (node == "_NativeFirstStageBackward") == (status == "on")
    if builds == "empty":
        assert "undefined symbol: first_stage_" in status


@needs_compiler
@pytest.mark.slow
def test_a_second_openmp_runtime_loaded_in_the_process_turns_the_kernel_off(tmp_path):
    runtime = build_library(tmp_path, "int omp_get_max_threads(void) { return 1; }\n", "libomp.so")
    status, node = run_stage(tmp_path, LD_PRELOAD=str(runtime))  # mapped before torch's libgomp
    assert status.startswith(f"off (another OpenMP runtime is loaded ({runtime})")
    assert node != "_NativeFirstStageBackward"


@needs_kernel
@pytest.mark.slow
def test_workers_building_the_kernel_at_once_each_load_a_whole_one(tmp_path):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run_stage(tmp_path), range(4)))
    assert results == [("on", "_NativeFirstStageBackward")] * 4
    built = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(built) == 1 and built[0].endswith(".so")  # no partial files left behind
