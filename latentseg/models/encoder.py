"""CNN encoders: image ``[B, C, H, W]`` -> stride-4 features ``[B, feature_dim, H/4, W/4]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentseg.config import ModelConfig


class SimpleEncoder(nn.Module):
    """The tutorial's encoder: two conv+ReLU+max-pool stages (receptive field 10 px).

    ``pool_first`` (the fast path) computes ``relu(pool(x))`` instead of the tutorial's
    ``pool(relu(x))``: the same values (max commutes with the monotone ReLU) and the same
    gradients, with the ReLU and its backward on a quarter of the elements; without gradients
    it pools with :func:`max_pool_2x2`.
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
            pool = self.pool if torch.is_grad_enabled() else max_pool_2x2
            x = F.relu(pool(self.conv1(x)), inplace=True)
            return x, F.relu(pool(self.conv2(x)), inplace=True)
        x = self.pool(F.relu(self.conv1(x)))
        return x, self.pool(F.relu(self.conv2(x)))


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
