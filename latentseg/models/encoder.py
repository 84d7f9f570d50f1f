"""CNN encoders: image ``[B, C, H, W]`` -> stride-4 features ``[B, feature_dim, H/4, W/4]``."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentseg.config import ModelConfig
from latentseg.models import native


class SimpleEncoder(nn.Module):
    """The tutorial's encoder: two conv+ReLU+max-pool stages (receptive field 10 px).

    ``pool_first`` (the fast path) computes ``relu(pool(x))`` instead of the tutorial's
    ``pool(relu(x))``: the same values (max commutes with the monotone ReLU) and the same
    gradients, with the ReLU and its backward on a quarter of the elements; without gradients
    it pools with :func:`max_pool_2x2`; on AVX2 and AVX-512 CPUs the first stage and the
    second stage's pooling run a native kernel (:func:`first_stage`, :func:`pool_relu`), and
    on AVX2 the second convolution's weight gradient is a GEMM (:func:`conv3x3`).
    """

    def __init__(
        self, in_channels: int, feature_dim: int, width: int = 32, pool_first: bool = False
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, feature_dim, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.pool_first = pool_first

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x)[1]

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(first-stage features [B, width, H/2, W/2], features [B, F, H/4, W/4])``."""
        if self.pool_first:
            x = first_stage(self.conv1, x)
            return x, pool_relu(conv3x3(self.conv2, x))
        x = self.pool(F.relu(self.conv1(x)))
        return x, self.pool(F.relu(self.conv2(x)))


# Whether the first stage (forward and backward) runs latentseg's native kernel
# (:func:`first_stage`; the second stage pools with it, training and inference, at every
# batch size unless this is False: :func:`pool_relu`): None decides by the size of the batch
# (at least GEMM_MIN_POSITIONS input pixels), always on a CPU of NATIVE_ISAS and only where
# the kernel could be built (latentseg.models.native.status()). Measured side by side on an
# AVX2 and an AVX-512 AMD EPYC (docs/performance.md): faster than PyTorch's ops on both.
NATIVE_FIRST_STAGE: bool | None = None
NATIVE_ISAS = ("AVX2", "AVX512")  # torch's CPU capabilities the kernel (AVX2 code) runs on


def first_stage(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``relu(max_pool2d(conv(x), 2))``, for training and inference. Where the input needs no
    gradient (the image), the convolution is 3x3, stride 1, padding 1, with at most 3 input
    channels, on channels_last float32 CPU tensors of even height and width, and
    :data:`NATIVE_FIRST_STAGE` says so, it runs latentseg's native kernel (``first_stage.c``):
    the convolution, pooling and ReLU in one pass that never stores the full-resolution
    convolution output (with a multiple of 16 output channels; else oneDNN's convolution,
    then the kernel's pooling), keeping for the backward one byte per pooled output (its
    window's winner); the backward takes the weight and bias gradients straight from the
    pooled gradient, without max_pool2d's backward writing a full-resolution gradient (3/4
    zeros) and a GEMM reading it back. The same values to float32 rounding, and gradients (ties
    go to the first maximum of a window, as in max_pool2d). Elsewhere, PyTorch's ops."""
    if _native_first_stage(conv, x):
        trained = [p for p in (conv.weight, conv.bias) if p is not None and p.requires_grad]
        if torch.is_grad_enabled() and trained:
            return _NativeFirstStage.apply(x, conv.weight, conv.bias)
        return _native_forward(x, conv.weight, conv.bias, None)
    if torch.is_grad_enabled():
        return F.relu(F.max_pool2d(conv3x3(conv, x), 2, 2), inplace=True)
    return F.relu(max_pool_2x2(conv(x)), inplace=True)


def _native_forward(x: Tensor, weight: Tensor, bias: Tensor | None, window: Tensor | None):
    """The native stage's output ``[B, C, H/2, W/2]`` (channels_last), and each window's
    winner into ``window`` ``[B, H/2, W/2, C]`` uint8 unless it is None."""
    batch, _, height, width = x.shape
    channels = weight.shape[0]
    if channels % 16 == 0:
        out = x.new_empty(batch, height // 2, width // 2, channels)
        args = (batch, height, width, x.shape[1], channels, torch.get_num_threads())
        taps = weight.detach().permute(2, 3, 1, 0).contiguous()  # [kh, kw, in, out]
        # held in a name while the kernel runs: a pointer into a temporary copy would dangle
        bias = None if bias is None else bias.detach().contiguous()
        failed = native.kernel().first_stage_forward(
            x.data_ptr(), taps.data_ptr(), None if bias is None else bias.data_ptr(),
            out.data_ptr(), None if window is None else window.data_ptr(), *args,
        )  # fmt: skip
        if failed:
            raise MemoryError("latentseg's native first-stage kernel could not allocate memory")
        return out.permute(0, 3, 1, 2)
    y = F.conv2d(x, weight, bias, padding=1).contiguous(memory_format=torch.channels_last)
    return _native_pool(y, window)


def pool_relu(y: Tensor) -> Tensor:
    """``relu(max_pool2d(y, 2))``, for training and inference. Unless
    :data:`NATIVE_FIRST_STAGE` is False, where ``y`` is a channels_last float32 CPU tensor of
    even height and width, the native kernel pools and applies the ReLU in one pass (at every
    batch size: as fast or faster than PyTorch's ops from 1 to 32 images, measured on an
    AVX-512 AMD EPYC), keeping for the backward one byte per output (its window's winner or
    the ReLU's cut) instead of max_pool2d's int64 indices and the ReLU's output; its backward
    writes ``y``'s gradient in one pass, each window's gradient to its winner and zeros
    around it. The same values and gradients as PyTorch's ops (ties go to the first maximum
    of a window, NaN wins, as in max_pool2d). Elsewhere, without gradients,
    :func:`max_pool_2x2` and an in-place ReLU; with them, ``max_pool2d`` and the ReLU."""
    if not (NATIVE_FIRST_STAGE is not False and _native_input(y) and y.dtype == torch.float32):
        if torch.is_grad_enabled():
            return F.relu(F.max_pool2d(y, 2, 2), inplace=True)
        return F.relu(max_pool_2x2(y), inplace=True)
    if torch.is_grad_enabled() and y.requires_grad:
        return _NativePoolRelu.apply(y)
    return _native_pool(y, None)


def _native_input(x: Tensor) -> bool:
    """Whether the native kernel can take ``x`` (its dtype aside): a non-empty 4-d
    channels_last CPU tensor of even height and width, on a CPU of :data:`NATIVE_ISAS`, with
    the kernel built."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.shape[0] > 0
        and x.shape[2] % 2 == 0
        and x.shape[3] % 2 == 0
        and x.is_contiguous(memory_format=torch.channels_last)
        and _cpu_capability() in NATIVE_ISAS
        and native.kernel() is not None
    )


def _native_pool(y: Tensor, window: Tensor | None) -> Tensor:
    batch, channels, height, width = y.shape
    out = y.new_empty(batch, height // 2, width // 2, channels)
    native.kernel().first_stage_pool(
        y.data_ptr(), out.data_ptr(), None if window is None else window.data_ptr(),
        batch, height, width, channels, torch.get_num_threads(),
    )  # fmt: skip
    return out.permute(0, 3, 1, 2)


class _NativePoolRelu(torch.autograd.Function):
    """:func:`pool_relu` with the native kernel's backward."""

    @staticmethod
    def forward(ctx, y: Tensor) -> Tensor:
        batch, channels, height, width = y.shape
        window = torch.empty(batch, height // 2, width // 2, channels, dtype=torch.uint8)
        out = _native_pool(y, window)
        ctx.save_for_backward(window)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (window,) = ctx.saved_tensors
        batch, height, width, channels = window.shape
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_y = grad.new_empty(batch, 2 * height, 2 * width, channels)
        native.kernel().first_stage_unpool(
            grad.data_ptr(), window.data_ptr(), grad_y.data_ptr(),
            batch, 2 * height, 2 * width, channels, torch.get_num_threads(),
        )  # fmt: skip
        return grad_y.permute(0, 3, 1, 2)


def native_first_stage_status() -> str:
    """Whether batches of at least :data:`GEMM_MIN_POSITIONS` pixels run the native first
    stage here (training and inference): ``"on"``, or ``"off (<why>)"``."""
    if NATIVE_FIRST_STAGE is False:
        return "off (NATIVE_FIRST_STAGE is False)"
    if _cpu_capability() not in NATIVE_ISAS:
        return f"off (AVX2 and AVX-512 CPUs only; this one runs {_cpu_capability()})"
    return native.status()


def _native_first_stage(conv: nn.Conv2d, x: Tensor) -> bool:
    wanted = NATIVE_FIRST_STAGE
    if wanted is None:
        positions = x.shape[0] * x.shape[2] * x.shape[3]
        wanted = positions >= GEMM_MIN_POSITIONS
    return (
        wanted
        and not (torch.is_grad_enabled() and x.requires_grad)
        and _plain_fp32_3x3(conv, x)
        and x.shape[1] <= native.MAX_IN_CHANNELS
        and _native_input(x)
    )


class _NativeFirstStage(torch.autograd.Function):
    """:func:`first_stage` with the native kernel's backward (weight and bias only)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        batch, _, height, width = x.shape
        window = torch.empty(batch, height // 2, width // 2, weight.shape[0], dtype=torch.uint8)
        out = _native_forward(x, weight, bias, window)
        ctx.save_for_backward(x, window)
        ctx.has_bias = bias is not None
        ctx.weight_format = (
            torch.channels_last
            if weight.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, Tensor | None]:
        x, window = ctx.saved_tensors
        batch, height, width, channels = window.shape
        in_channels = x.shape[1]
        grad = grad.contiguous(memory_format=torch.channels_last)
        rows = grad.new_empty(channels, native.PATCH_WIDTH)
        failed = native.kernel().first_stage_weight_grad(
            x.data_ptr(), window.data_ptr(), grad.data_ptr(),
            batch, 2 * height, 2 * width, in_channels, channels, rows.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        if failed:
            raise MemoryError("latentseg's native first-stage kernel could not allocate memory")
        taps = 9 * in_channels
        grad_w = rows[:, :taps].view(channels, 3, 3, in_channels).permute(0, 3, 1, 2)
        grad_b = rows[:, taps].clone() if ctx.has_bias else None
        return None, grad_w.contiguous(memory_format=ctx.weight_format), grad_b


# Whether 3x3 convolutions take their weight gradients as GEMMs (:func:`conv3x3`): None
# decides by the CPU's instruction set (AVX2: yes; AVX-512 and others: oneDNN's own kernel)
# and the size of the batch: below GEMM_MIN_POSITIONS output positions (batch x H x W) oneDNN
# was as fast or faster (measured on AVX2, 1 and 2 threads: 0.9-1.5x the time at 8-16
# 32x32 images, 0.5-0.9x from 16 64x64 images up).
GEMM_WEIGHT_GRAD: bool | None = None
GEMM_MIN_POSITIONS = 1 << 16
IM2COL_CHUNK_BYTES = 4 << 20  # im2col rows built at a time (whole images, at least one)


def conv3x3(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)``; when training a 3x3, stride-1, padding-1 convolution on channels_last
    float32 CPU tensors where :data:`GEMM_WEIGHT_GRAD` says so (by default: on AVX2, for
    batches of at least :data:`GEMM_MIN_POSITIONS` pixels), its backward takes the weight
    (and bias) gradient as one GEMM per chunk of images over their im2col rows
    (:func:`conv3x3_weight_grad`) instead of oneDNN's kernel. On AVX2, oneDNN's
    backward-weights kernel for channels_last runs at about half the speed of its forward
    kernel (measured: 62-107 ms against 48-66 ms for the tutorial's second convolution at
    batch 32, 2 threads). The input gradient stays oneDNN's."""
    if not (
        torch.is_grad_enabled()
        and conv.weight.requires_grad
        and _gemm_weight_grad(x)
        and _plain_fp32_3x3(conv, x)
    ):
        return conv(x)
    return _Conv3x3GemmWeightGrad.apply(x, conv.weight, conv.bias)


def _plain_fp32_3x3(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether ``conv`` is a 3x3, stride-1, padding-1 convolution (no dilation, no groups)
    applied to a 4-d channels_last float32 CPU tensor outside autocast: what the GEMM weight
    gradient and the native first stage handle."""
    return (
        x.device.type == "cpu"
        and x.dtype == conv.weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _gemm_weight_grad(x: Tensor) -> bool:
    if GEMM_WEIGHT_GRAD is not None:
        return GEMM_WEIGHT_GRAD
    positions = x.shape[0] * x.shape[2] * x.shape[3]
    return positions >= GEMM_MIN_POSITIONS and _cpu_capability() == "AVX2"


@functools.cache
def _cpu_capability() -> str:
    """The ISA torch's CPU kernels run on, asked once per process (not on every forward)."""
    return torch.backends.cpu.get_cpu_capability()


class _Conv3x3GemmWeightGrad(torch.autograd.Function):
    """A 3x3 convolution (stride 1, padding 1) whose backward computes the weight and bias
    gradients with :func:`conv3x3_weight_grad`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [True, False, False],
            )[0]  # fmt: skip
        grad_w, grad_b = conv3x3_weight_grad(x, grad, ctx.has_bias)
        format_ = (
            torch.channels_last
            if weight.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        return grad_x, grad_w.contiguous(memory_format=format_), grad_b


def conv3x3_weight_grad(x: Tensor, grad: Tensor, bias: bool) -> tuple[Tensor, Tensor | None]:
    """The weight gradient ``[O, C, 3, 3]`` (and the bias gradient ``[O]``, or None) of a 3x3,
    stride-1, padding-1 convolution of ``x`` ``[B, C, H, W]`` whose output had gradient
    ``grad`` ``[B, O, H, W]``: ``grad^T @ im2col(x)`` as one GEMM per chunk of whole images,
    the im2col rows (with a column of ones for the bias) built in one reused buffer."""
    batch, channels, height, width = x.shape
    out_channels = grad.shape[1]
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # [B, H+2, W+2, C]
    grad_rows = grad.permute(0, 2, 3, 1)  # [B, H, W, O]: a view of a channels_last grad
    taps = 9 * channels
    columns = taps + int(bias)
    step = max(1, IM2COL_CHUNK_BYTES // (height * width * columns * x.element_size()))
    step = min(step, batch)
    rows = x.new_empty(step, height, width, columns)
    if bias:
        rows[..., taps] = 1
    patches = rows[..., :taps].view(step, height, width, 3, 3, channels)
    total = x.new_zeros(out_channels, columns)
    for start in range(0, batch, step):
        n = min(step, batch - start)
        for kh in range(3):  # rows kh..kh+H; unfold takes the 3 columns of each window
            window = padded[start : start + n, kh : kh + height].unfold(2, 3, 1)
            patches[:n, :, :, kh] = window.permute(0, 1, 2, 4, 3)
        total.addmm_(
            grad_rows[start : start + n].reshape(-1, out_channels).t(),
            rows[:n].view(-1, columns),
        )
    grad_w = total[:, :taps].view(out_channels, 3, 3, channels).permute(0, 3, 1, 2)
    return grad_w, (total[:, taps].clone() if bias else None)


POOL_CHUNK_BYTES = 1 << 20  # a core's L2 cache on the CPUs measured (AMD EPYC)


def max_pool_2x2(x: Tensor) -> Tensor:
    """``F.max_pool2d(x, 2, 2)`` for inference: the same values, as two elementwise maxima
    over long contiguous runs of a channels_last ``x``, first of each pair of rows, then of
    each pair of columns, a few images at a time so that the row maxima stay in the cache; no
    indices are written. Not for training: where inputs tie, autograd through ``maximum``
    splits the gradient between them where ``max_pool2d`` gives it to one. Other layouts and
    odd sizes go to ``F.max_pool2d``."""
    batch, channels, height, width = x.shape
    if (
        not x.numel()
        or height % 2
        or width % 2
        or not x.is_contiguous(memory_format=torch.channels_last)
    ):
        return F.max_pool2d(x, 2, 2)
    pairs = x.permute(0, 2, 3, 1).view(batch, height // 2, 2, width * channels)
    pooled = x.new_empty(batch, height // 2, width // 2, channels)
    step = max(1, POOL_CHUNK_BYTES // (pairs[0, :, 0].numel() * x.element_size()))
    for start in range(0, batch, step):
        part = pairs[start : start + step]
        rows = torch.maximum(part[:, :, 0], part[:, :, 1])
        rows = rows.view(-1, height // 2, width // 2, 2, channels)
        torch.maximum(rows[..., 0, :], rows[..., 1, :], out=pooled[start : start + step])
    return pooled.permute(0, 3, 1, 2)


def _conv_bn_relu(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ContextBlock(nn.Module):
    """Residual dilated 3x3 conv: widens the receptive field at stride 4 without pooling."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = _conv_bn_relu(channels, channels, dilation)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x)


class DeepEncoder(nn.Module):
    """``depth`` conv-BN-ReLU layers per stage, two pooled stages, then dilated context blocks."""

    def __init__(
        self, in_channels: int, feature_dim: int, width: int, depth: int, dilations: tuple[int, ...]
    ) -> None:
        super().__init__()
        stage1 = [_conv_bn_relu(in_channels, width)] + [
            _conv_bn_relu(width, width) for _ in range(depth - 1)
        ]
        stage2 = [_conv_bn_relu(width, feature_dim)] + [
            _conv_bn_relu(feature_dim, feature_dim) for _ in range(depth - 1)
        ]
        self.stage1 = nn.Sequential(*stage1, nn.MaxPool2d(2, 2))
        self.stage2 = nn.Sequential(*stage2, nn.MaxPool2d(2, 2))
        self.context = nn.Sequential(*(ContextBlock(feature_dim, d) for d in dilations))

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x)[1]

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(first-stage features [B, width, H/2, W/2], features [B, F, H/4, W/4])``."""
        first = self.stage1(x)
        return first, self.context(self.stage2(first))


def build_encoder(config: ModelConfig) -> nn.Module:
    if config.encoder == "simple":
        return SimpleEncoder(
            config.in_channels,
            config.feature_dim,
            config.encoder_width,
            pool_first=config.attention_impl == "fused",
        )
    return DeepEncoder(
        config.in_channels,
        config.feature_dim,
        config.encoder_width,
        config.encoder_depth,
        config.encoder_dilations,
    )
