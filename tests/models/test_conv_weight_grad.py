"""The 3x3 convolutions' weight gradients as GEMMs (the fast path's backward on AVX2 CPUs):
the same gradients as PyTorch's own convolution backward, to float32 rounding, whatever the
batch, the chunking and the bias; and the fast model still matches the reference with it, as
with the native first stage (tests/models/test_native_first_stage.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latentseg.models import create_model, encoder, native
from latentseg.train.evaluate import target_at
from latentseg.train.fastpath import prepare_model, to_device

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("batch", "channels", "out_channels", "size", "bias", "chunk_bytes"),
    [
        (4, 3, 8, 16, True, 4 << 20),  # one chunk: every image at once
        (5, 8, 6, 12, True, 12 * 12 * 73 * 4 * 2),  # two images a chunk, and one left over
        (3, 4, 5, 9, False, 1),  # odd size, no bias, a chunk smaller than an image: one each
    ],
)
def test_gemm_weight_gradients_equal_the_convolutions_own(
    batch, channels, out_channels, size, bias, chunk_bytes, monkeypatch
):
    monkeypatch.setattr(encoder, "IM2COL_CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(out_channels, channels, 3, 3, generator=gen, requires_grad=True)
    b = torch.randn(out_channels, generator=gen, requires_grad=True) if bias else None
    grad = torch.randn(batch, out_channels, size, size, generator=gen)
    grad = grad.contiguous(memory_format=torch.channels_last)
    F.conv2d(x, weight, b, padding=1).backward(grad)

    grad_w, grad_b = encoder.conv3x3_weight_grad(x, grad, bias)
    assert grad_w.shape == weight.shape
    # float32 rounding of sums of batch * size^2 products, in another order
    assert (grad_w - weight.grad).abs().max() <= 1e-5 * weight.grad.abs().max()
    if bias:
        assert (grad_b - b.grad).abs().max() <= 1e-5 * b.grad.abs().max()
    else:
        assert grad_b is None


def trained_grads(model, images, masks, monkeypatch, **settings):
    """The gradients of one step with ``settings`` set on :mod:`latentseg.models.encoder`,
    and the names of the backward functions the step ran."""
    for name, value in settings.items():
        monkeypatch.setattr(encoder, name, value)
    model.zero_grad(set_to_none=True)
    logits = model(to_device(images, CPU))
    F.cross_entropy(logits, target_at(masks, logits.shape[-2:])).backward()
    seen, stack = set(), [logits.grad_fn]
    while stack:  # which backward functions the step ran
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return grads, {type(node).__name__ for node in seen}


NATIVE_UNAVAILABLE = (
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512") or native.kernel() is None
)


@pytest.mark.parametrize(
    ("setting", "node"),
    [
        ("GEMM_WEIGHT_GRAD", "_Conv3x3GemmWeightGradBackward"),
        pytest.param(
            "NATIVE_FIRST_STAGE",
            "_NativeFirstStageBackward",
            marks=pytest.mark.skipif(NATIVE_UNAVAILABLE, reason=f"native: {native.status()}"),
        ),
    ],
)
def test_the_fast_model_trains_the_same_with_either_kernel(setting, node, monkeypatch):
    torch.manual_seed(0)
    reference = create_model("tutorial", attention_impl="reference", num_classes=4)
    fast = create_model("tutorial", attention_impl="fused", num_classes=4)
    fast.load_state_dict(reference.state_dict())
    fast = prepare_model(fast, CPU)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=gen)
    masks = torch.randint(0, 4, (3, 32, 32), generator=gen)
    logits = reference(images)
    F.cross_entropy(logits, target_at(masks, logits.shape[-2:])).backward()

    with_it, with_it_nodes = trained_grads(fast, images, masks, monkeypatch, **{setting: True})
    without, without_nodes = trained_grads(fast, images, masks, monkeypatch, **{setting: False})
    assert node in with_it_nodes
    assert node not in without_nodes
    for name, parameter in reference.named_parameters():
        scale = parameter.grad.abs().max().clamp(min=1e-5)
        for grads in (with_it, without):
            assert (grads[name] - parameter.grad).abs().max() <= 1e-4 * scale, name
        assert with_it[name].stride() == without[name].stride(), name  # same layout for Adam


def test_gemm_weight_gradients_are_the_default_on_avx2_for_large_batches_never_under_autocast(
    monkeypatch,
):
    monkeypatch.setattr(encoder, "GEMM_WEIGHT_GRAD", None)
    avx2 = torch.backends.cpu.get_cpu_capability() == "AVX2"
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    large = torch.randn(4, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    small = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    taken = {type(encoder.conv3x3(conv, x).grad_fn).__name__ for x in (large, small)}
    assert ("_Conv3x3GemmWeightGradBackward" in taken) == avx2  # 65,536 pixels: on AVX2
    assert len(taken) == 1 + avx2  # 16,384 pixels: oneDNN's on every CPU
    monkeypatch.setattr(encoder, "GEMM_WEIGHT_GRAD", True)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    assert type(encoder.conv3x3(conv, x).grad_fn).__name__ == "_Conv3x3GemmWeightGradBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "Gemm" not in type(encoder.conv3x3(conv, x).grad_fn).__name__
    with torch.no_grad():
        assert encoder.conv3x3(conv, x).grad_fn is None
    strided = torch.nn.Conv2d(3, 4, 3, padding=1, stride=2)
    assert "Gemm" not in type(encoder.conv3x3(strided, x).grad_fn).__name__
