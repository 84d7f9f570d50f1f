"""The latent-attention segmentation model, built from a ModelConfig."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentseg.config import ModelConfig
from latentseg.models.attention import ExpertSegmentation, LatentAttention
from latentseg.models.encoder import build_encoder

STRIDE = 4  # the encoder's two 2x2 poolings


@dataclass(frozen=True)
class AttentionMaps:
    """Per-head attention weights of one forward pass (for plots and latent diagnostics)."""

    latent_to_pixel: Tensor  # [B, heads, num_latents, h * w]: each latent's weights over pixels
    pixel_to_latent: Tensor  # [B, heads, h * w, num_latents]: each pixel's weights over experts
    grid: tuple[int, int]  # (h, w) of the token grid, H/4 x W/4

    def assignment(self) -> Tensor:
        """``[B, h, w]``: the expert each pixel attends to most (mean over heads)."""
        return self.pixel_to_latent.mean(1).argmax(-1).view(-1, *self.grid)

    def latent_maps(self) -> Tensor:
        """``[B, num_latents, h, w]``: each latent's attention over the image (mean over heads)."""
        batch, _, latents, _ = self.latent_to_pixel.shape
        return self.latent_to_pixel.mean(1).view(batch, latents, *self.grid)


class LatentSegModel(nn.Module):
    """Encoder -> pixel tokens -> latent experts (cross-attention) -> pixels attend to the
    experts -> per-pixel class logits.

    ``forward(images)`` returns logits ``[B, num_classes, H/4, W/4]`` (``output='stride4'``)
    or ``[B, num_classes, H, W]`` (``output='full'``). ``forward(images, return_attention=True)``
    returns ``(logits, AttentionMaps | None)``; attention is ``None`` without expert attention.
    """

    def __init__(self, config: ModelConfig, variant: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.variant = variant
        c = config
        self.encoder = build_encoder(c)
        self.latent_attention = (
            LatentAttention(
                c.feature_dim, c.latent_dim, c.num_latents, c.num_heads, c.attention_impl
            )
            if c.expert_attention
            else None
        )
        self.expert_segmentation = ExpertSegmentation(
            c.feature_dim,
            c.latent_dim,
            c.num_heads,
            c.num_classes,
            c.attention_impl,
            c.expert_attention,
            c.pixel_residual,
        )

    def forward(self, images: Tensor, return_attention: bool = False):
        features = self.encoder(images)
        batch, channels, h, w = features.shape
        # [B, h*w, F]: a view (no copy) when the features are channels_last
        tokens = features.permute(0, 2, 3, 1).reshape(batch, h * w, channels)
        experts, latent_weights = None, None
        if self.latent_attention is not None:
            experts, latent_weights = self.latent_attention(tokens, return_attention)
        logits, pixel_weights = self.expert_segmentation(tokens, experts, return_attention)
        logits = logits.view(batch, h, w, -1).permute(0, 3, 1, 2)  # NCHW shape, NHWC memory
        if self.config.output == "full":
            logits = F.interpolate(
                logits, size=images.shape[-2:], mode="bilinear", align_corners=False
            )
        if not return_attention:
            return logits
        maps = (
            None if latent_weights is None else AttentionMaps(latent_weights, pixel_weights, (h, w))
        )
        return logits, maps

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.config.output == "full":
            return height, width
        return height // STRIDE, width // STRIDE


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(config: ModelConfig, image_size: tuple[int, int] = (128, 128)) -> int:
    """Forward FLOPs per image (a multiply-add counts 2), with ``torch.utils.flop_counter``.

    Counted on the reference implementation: the CPU SDPA kernel is invisible to the counter,
    and both implementations do the same arithmetic.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = LatentSegModel(config.model_copy(update={"attention_impl": "reference"})).eval()
    model.requires_grad_(False)  # not no_grad(): the counter's module tracker trips on it
    images = torch.zeros(1, config.in_channels, *image_size)
    with FlopCounterMode(display=False) as counter:
        model(images)
    return int(counter.get_total_flops())
