"""The latent-attention segmentation model, built from a ModelConfig."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentseg.config import ModelConfig
from latentseg.models.attention import ExpertSegmentation, LatentAttention
from latentseg.models.encoder import build_encoder
from latentseg.models.latent import (
    CrossAttendBlock,
    LatentStack,
    PositionEncoding,
    RouterStats,
    moe_layers,
)

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
                c.feature_dim,
                c.latent_dim,
                c.num_latents,
                c.num_heads,
                c.attention_impl,
                c.kv_rank,
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
            c.kv_rank,
        )
        # Beyond the tutorial (each None at its default, so `tutorial` is the tutorial exactly).
        self.position = (
            PositionEncoding(c.position_encoding, c.feature_dim, c.fourier_bands)
            if c.position_encoding != "none"
            else None
        )
        self.latent_stack = (
            LatentStack(c)
            if c.expert_attention and (c.latent_depth or c.cross_attend_passes > 1)
            else None
        )
        self.skip = (
            SkipRefiner(c.num_classes, c.encoder_width) if c.decoder == "attention+skip" else None
        )
        # looked up once, not per training step (aux_loss) or per evaluation (router_stats)
        self._moe = tuple(moe_layers(self))

    def forward(self, images: Tensor, return_attention: bool = False):
        if self.skip is not None:
            first, features = self.encoder.stages(images)
        else:
            first, features = None, self.encoder(images)
        batch, channels, h, w = features.shape
        # [B, h*w, F]: a view (no copy) when the features are channels_last
        tokens = features.permute(0, 2, 3, 1).reshape(batch, h * w, channels)
        if self.position is not None:
            tokens = self.position(tokens, h, w)
        experts, latent_weights = None, None
        if self.latent_attention is not None:
            experts, latent_weights = self.latent_attention(tokens, return_attention)
            if self.latent_stack is not None:
                experts = self.latent_stack(experts, tokens)
        logits, pixel_weights = self.expert_segmentation(tokens, experts, return_attention)
        logits = logits.view(batch, h, w, -1).permute(0, 3, 1, 2)  # NCHW shape, NHWC memory
        if self.skip is not None:
            logits = self.skip(logits, first, images.shape[-2:])
        elif self.config.output == "full":
            logits = F.interpolate(
                logits, size=images.shape[-2:], mode="bilinear", align_corners=False
            )
        if not return_attention:
            return logits
        maps = (
            None if latent_weights is None else AttentionMaps(latent_weights, pixel_weights, (h, w))
        )
        return logits, maps

    def aux_loss(self) -> Tensor | None:
        """The weighted MoE load-balancing loss of the last training forward (None without
        MoE), taken from the layers: a second call returns None until the next forward."""
        if not self._moe:
            return None
        losses = []
        for layer in self._moe:
            losses += layer.aux_losses
            layer.aux_losses = []  # no autograd graph left on the module (deepcopy, pickling)
        if not losses:
            return None
        return self.config.moe_aux_weight * torch.stack(losses).sum()

    def router_stats(self, reset: bool = False) -> RouterStats | None:
        """Routing load over all MoE layers in evaluation since the last reset (None without
        MoE)."""
        if not self._moe:
            return None
        stats = RouterStats(sum(m.stats.counts for m in self._moe).clone())
        if reset:
            for m in self._moe:
                m.stats.counts.zero_()
        return stats

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.config.output == "full":
            return height, width
        return height // STRIDE, width // STRIDE


class SkipRefiner(nn.Module):
    """The 'attention+skip' decoder: the stride-4 logits, upsampled to the encoder's first
    stage (stride 2), are refined by a small conv over them and those features (residual),
    then upsampled to the input size."""

    def __init__(self, num_classes: int, skip_channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_classes + skip_channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, logits: Tensor, first: Tensor, size) -> Tensor:
        up = F.interpolate(logits, size=first.shape[-2:], mode="bilinear", align_corners=False)
        refined = up + self.conv2(F.relu(self.conv1(torch.cat([up, first.to(up.dtype)], 1))))
        return F.interpolate(refined, size=size, mode="bilinear", align_corners=False)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def kv_costs(model: LatentSegModel, image_size: tuple[int, int] = (128, 128)) -> dict[str, int]:
    """What the keys and values of the cross-attentions cost, to compare MLA (``kv_rank``)
    with full-rank keys and values:

    - ``kv_params``: parameters that produce keys and values (the tutorial's ``key_proj`` /
      ``value_proj`` and the attentions' key/value in-projections; with MLA the
      down-projection and the up-projections);
    - ``kv_activations``: key/value elements one image's forward builds (its "KV cache"): full
      rank, ``2 * latent_dim`` per pixel token and per expert; MLA, ``kv_rank`` per pixel
      token (the up-projections are absorbed, see ``attend_compressed``) and
      ``kv_rank + 2 * latent_dim`` per expert (there are few; they are rebuilt).
    """
    c = model.config
    tokens = (image_size[0] // STRIDE) * (image_size[1] // STRIDE)
    params = activations = 0
    for module in model.modules():
        if isinstance(module, (LatentAttention, CrossAttendBlock, ExpertSegmentation)):
            if getattr(module, "attention", None) is None:
                continue
            _, key_in, value_in = module.attention.in_slices()
            params += sum(t.numel() for t in (*key_in, *value_in))
            for name in ("key_proj", "value_proj", "kv_down"):
                part = getattr(module, name, None)
                params += count_params(part) if part is not None else 0
    if c.expert_attention:
        per_token = c.kv_rank if c.kv_rank else 2 * c.latent_dim
        activations += c.cross_attend_passes * tokens * per_token
        activations += c.num_latents * (2 * c.latent_dim + (c.kv_rank or 0))
    return {"kv_params": params, "kv_activations": activations}


# Forward FLOPs per image already counted in this process, by model config (as JSON) and
# image size: counting builds the model and runs it under the counter, which is most of what a
# short trial costs beyond its training, and a study's seeds and trials share their configs.
_FLOPS: dict[tuple[str, tuple[int, int]], int] = {}


def count_flops(config: ModelConfig, image_size: tuple[int, int] = (128, 128)) -> int:
    """Forward FLOPs per image (a multiply-add counts 2), with ``torch.utils.flop_counter``.

    Counted on the reference implementation: the CPU SDPA kernel is invisible to the counter,
    and both implementations do the same arithmetic. Counted once per config and size in a
    process (the count depends on nothing else).
    """
    key = (config.model_dump_json(), (int(image_size[0]), int(image_size[1])))
    if key not in _FLOPS:
        _FLOPS[key] = _count_flops(config, key[1])
    return _FLOPS[key]


def _count_flops(config: ModelConfig, image_size: tuple[int, int]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model = LatentSegModel(config.model_copy(update={"attention_impl": "reference"})).eval()
    model.requires_grad_(False)  # not no_grad(): the counter's module tracker trips on it
    images = torch.zeros(1, config.in_channels, *image_size)
    with FlopCounterMode(display=False) as counter:
        model(images)
    return int(counter.get_total_flops())
