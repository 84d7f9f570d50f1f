"""Synthetic datasets: ``shapes`` (learnable) and ``noise`` (the tutorial's negative control).

Samples are deterministic per (data seed, global index); train, val and test use disjoint
index ranges, so the splits never share a sample. Generation is vectorised over the batch:
per-sample randomness is drawn from a per-sample generator (a few small tensors), all the
per-pixel work is done for the whole batch at once.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor

from latentseg.config import StrictModel
from latentseg.data.base import (
    DatasetInfo,
    SegmentationDataset,
    Split,
    SplitSizes,
    sample_seed,
    validate_params,
)

SHAPE_NAMES = ("circle", "rectangle", "triangle")


class GeneratedSplit(Split):
    """A split whose samples come from ``generate(global_indices)``; cached once generated
    when the whole split fits in ``cache_bytes`` (images as float16, masks as uint8)."""

    def __init__(
        self,
        generate: Callable[[Sequence[int]], tuple[Tensor, Tensor]],
        start: int,
        size: int,
        cache: bool,
    ) -> None:
        self._generate = generate
        self._start = start
        self._size = size
        self._cache_enabled = cache
        self._images: Tensor | None = None
        self._masks: Tensor | None = None

    def __len__(self) -> int:
        return self._size

    def get_batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        if self._cache_enabled:
            if self._images is None:
                self._fill_cache()
            index = torch.as_tensor(indices, dtype=torch.long)
            return self._images[index].float(), self._masks[index].long()
        return self._generate([self._start + i for i in indices])

    def _fill_cache(self, chunk: int = 256) -> None:
        images, masks = [], []
        for begin in range(0, self._size, chunk):
            img, msk = self._generate(
                range(self._start + begin, self._start + min(begin + chunk, self._size))
            )
            images.append(img.half())
            masks.append(msk.to(torch.uint8))
        self._images, self._masks = torch.cat(images), torch.cat(masks)


def unit_grid(size: int) -> tuple[Tensor, Tensor]:
    """``(xs, ys)``: each pixel's coordinates in [0, 1], ``[size, size]`` each."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return xs, ys


def _cacheable(
    sizes: SplitSizes, channels: int, height: int, width: int, budget_bytes: int = 1 << 30
) -> bool:
    per_sample = channels * height * width * 2 + height * width
    return (sizes.train + sizes.val + sizes.test) * per_sample <= budget_bytes


class GeneratedDataset(SegmentationDataset):
    """A dataset generated from (data seed, global index): its splits are the disjoint index
    ranges of ``SplitSizes.offsets`` (``GENERATED_DEFAULTS`` for a size not given).

    A subclass names its ``Params`` model and its ``name`` (the registry's: it names the
    dataset in errors) and writes ``_info()``, its ``DatasetInfo`` from ``self.params``, and
    ``generate(indices)``, images and masks for global indices. Splits are kept in memory when
    the params have a ``cache`` switch that is on and all three fit in 1 GiB. Samples that
    depend on their split (``digits`` draws each split's digits from its own pool) come from an
    override of ``_generator(split)``.
    """

    Params: ClassVar[type[StrictModel]]
    name: ClassVar[str]

    def __init__(self, *, split_sizes: SplitSizes | None = None, seed: int = 0, **params) -> None:
        self.params = validate_params(self.Params, params, self.name)
        self.seed = seed
        self.sizes = (split_sizes or SplitSizes()).resolved()
        self.info = self._info()
        cache = getattr(self.params, "cache", False) and _cacheable(
            self.sizes, self.info.in_channels, *self.info.image_size
        )
        self._splits = {
            name: GeneratedSplit(self._generator(name), start, stop - start, cache)
            for name, (start, stop) in self.sizes.offsets().items()
        }

    @abc.abstractmethod
    def _info(self) -> DatasetInfo:
        """The dataset's ``DatasetInfo``, from ``self.params``."""

    def _generator(self, split: str) -> Callable[[Sequence[int]], tuple[Tensor, Tensor]]:
        """What makes ``split``'s samples from their global indices: ``generate``."""
        return self.generate

    @cached_property
    def _grid(self) -> tuple[Tensor, Tensor]:
        """``unit_grid`` of the (square) canvas, for the datasets that draw on one."""
        return unit_grid(self.info.image_size[0])


# --------------------------------------------------------------------------- shapes


class ShapesParams(StrictModel):
    image_size: int = Field(
        64, ge=16, le=1024, description="Height and width of each image (a multiple of 4)."
    )
    shapes: tuple[str, ...] = Field(
        SHAPE_NAMES,
        min_length=1,
        description="Shape kinds, one class each (plus background 0), from circle, rectangle, triangle.",
    )
    min_shapes: int = Field(1, ge=0, description="Fewest shapes per image.")
    max_shapes: int = Field(
        4,
        ge=1,
        le=16,
        description="Most shapes per image (overlaps allowed; later shapes are on top).",
    )
    min_size: float = Field(
        0.08,
        gt=0,
        le=0.5,
        description="Smallest shape radius / half-side, as a fraction of the image size.",
    )
    max_size: float = Field(
        0.22,
        gt=0,
        le=0.5,
        description="Largest shape radius / half-side, as a fraction of the image size.",
    )
    noise: float = Field(
        0.08, ge=0, description="Std of the per-pixel Gaussian noise (image values in [0, 1])."
    )
    texture: float = Field(
        0.25,
        ge=0,
        description="Amplitude of the background's sinusoidal texture and colour gradient.",
    )
    cache: bool = Field(
        True, description="Keep generated splits in memory (float16) when they fit in 1 GiB."
    )

    @model_validator(mode="after")
    def _check(self) -> ShapesParams:
        unknown = [s for s in self.shapes if s not in SHAPE_NAMES]
        if unknown:
            raise ValueError(f"unknown shape(s) {unknown}; allowed: {list(SHAPE_NAMES)}")
        if len(set(self.shapes)) != len(self.shapes):
            raise ValueError(f"shapes must not repeat: {list(self.shapes)}")
        if self.image_size % 4:
            raise ValueError(
                f"image_size must be a multiple of 4 (the model's stride), got {self.image_size}"
            )
        if self.min_shapes > self.max_shapes:
            raise ValueError(f"min_shapes ({self.min_shapes}) > max_shapes ({self.max_shapes})")
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) > max_size ({self.max_size})")
        return self


# Per-sample random draws, in this order (uniform [0, 1) each).
_BG = (
    3 + 3 + 3 + 2 * 4
)  # base colour, gradient colour, texture colour, 2 gratings x (freq, angle, phase, weight)
_PER_SHAPE = 10  # active, kind, cx, cy, size, aspect, angle, r, g, b


class Shapes(GeneratedDataset):
    """Circles, rectangles and triangles of random size, colour and position on noisy,
    textured backgrounds; class = shape kind (background 0); full-resolution masks.

    Colour never tells the class (each shape's colour is random, pushed away from the
    background's), so a model must see the shape's outline: a per-pixel head cannot.
    """

    Params = ShapesParams
    name = "shapes"

    def _info(self) -> DatasetInfo:
        p, size = self.params, self.params.image_size
        return DatasetInfo(self.name, len(p.shapes) + 1, 3, ("background", *p.shapes), (size, size))

    def generate(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Images ``[B, 3, H, W]`` (normalised) and masks ``[B, H, W]`` for global indices."""
        p = self.params
        size, slots = p.image_size, p.max_shapes
        draws, noise = [], []
        for index in indices:
            gen = torch.Generator().manual_seed(sample_seed(self.seed, index))
            draws.append(torch.rand(_BG + slots * _PER_SHAPE, generator=gen))
            noise.append(torch.randn(3, size, size, generator=gen))
        u = torch.stack(draws)  # [B, P]
        batch = u.shape[0]
        xs, ys = self._grid

        # Background: base colour + linear colour gradient + two sinusoidal gratings.
        base, ramp, tex = u[:, 0:3], u[:, 3:6] - 0.5, u[:, 6:9]
        gratings = u[:, 9:_BG].view(batch, 2, 4)
        freq = 2 + 10 * gratings[..., 0]
        angle = math.pi * gratings[..., 1]
        phase = 2 * math.pi * gratings[..., 2]
        weight = gratings[..., 3]
        proj = (
            xs * torch.cos(angle)[..., None, None] + ys * torch.sin(angle)[..., None, None]
        )  # [B, 2, H, W]
        wave = (
            weight[..., None, None]
            * torch.sin(2 * math.pi * freq[..., None, None] * proj + phase[..., None, None])
        ).sum(1)
        image = (
            base[:, :, None, None]
            + p.texture * ramp[:, :, None, None] * (xs + ys - 1)
            + p.texture * (tex[:, :, None, None] - 0.5) * wave[:, None]
        )
        mask = torch.zeros(batch, size, size, dtype=torch.long)

        shapes = u[:, _BG:].view(batch, slots, _PER_SHAPE)
        count = p.min_shapes + (shapes[:, 0, 0] * (p.max_shapes - p.min_shapes + 1)).long().clamp(
            max=p.max_shapes - p.min_shapes
        )
        for slot in range(slots):
            s = shapes[:, slot]
            active = slot < count  # [B]
            kind = (s[:, 1] * len(p.shapes)).long().clamp(max=len(p.shapes) - 1)
            cx, cy = s[:, 2, None, None], s[:, 3, None, None]
            radius = (p.min_size + (p.max_size - p.min_size) * s[:, 4])[:, None, None]
            aspect = (0.5 + s[:, 5])[:, None, None]  # rectangles: width/height ratio in [0.5, 1.5)
            theta = (2 * math.pi * s[:, 6])[:, None, None]
            inside = torch.zeros(batch, size, size, dtype=torch.bool)
            for k, name in enumerate(p.shapes):
                # each kind is drawn only on the samples whose shape in this slot is that kind
                rows = ((kind == k) & active).nonzero().flatten()
                if rows.numel() == 0:
                    continue
                kx, ky, kr = cx[rows], cy[rows], radius[rows]
                if name == "circle":
                    region = (xs - kx) ** 2 + (ys - ky) ** 2 <= kr**2
                elif name == "rectangle":
                    ka = aspect[rows]
                    region = ((xs - kx).abs() <= kr * ka.sqrt()) & (
                        (ys - ky).abs() <= kr / ka.sqrt()
                    )
                else:
                    region = _triangle(xs, ys, kx, ky, kr * 1.3, theta[rows])
                inside[rows] = region
            colour = s[:, 7:10]
            # Keep every shape visible: a colour too close to the background is inverted.
            close = (colour - base).norm(dim=1, keepdim=True) < 0.35
            colour = torch.where(close, 1 - colour, colour)
            image = torch.where(inside[:, None], colour[:, :, None, None], image)
            mask = torch.where(inside, (kind + 1)[:, None, None], mask)

        image = (image + p.noise * torch.stack(noise)).clamp_(0, 1)
        return (image - 0.5) / 0.25, mask


def _triangle(
    xs: Tensor, ys: Tensor, cx: Tensor, cy: Tensor, radius: Tensor, theta: Tensor
) -> Tensor:
    """Pixels inside an equilateral triangle (circumradius ``radius``, rotation ``theta``)."""
    inside = None
    vertices = [
        (
            cx + radius * torch.cos(theta + 2 * math.pi * i / 3),
            cy + radius * torch.sin(theta + 2 * math.pi * i / 3),
        )
        for i in range(3)
    ]
    for i in range(3):
        (x0, y0), (x1, y1) = vertices[i], vertices[(i + 1) % 3]
        side = (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0  # counter-clockwise vertices
        inside = side if inside is None else inside & side
    return inside


# --------------------------------------------------------------------------- noise


class NoiseParams(StrictModel):
    image_size: int = Field(
        128,
        ge=4,
        le=4096,
        description="Height and width (a multiple of label_stride); 128 in the tutorial.",
    )
    num_classes: int = Field(
        2, ge=2, le=1024, description="Number of (random) label classes; 2 in the tutorial."
    )
    in_channels: int = Field(3, ge=1, le=64, description="Image channels.")
    label_stride: int = Field(
        4,
        ge=1,
        description="Labels are drawn at 1/label_stride resolution (the tutorial's H/4) and repeated to full size.",
    )

    @model_validator(mode="after")
    def _check(self) -> NoiseParams:
        if self.image_size % self.label_stride:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of label_stride ({self.label_stride})"
            )
        return self


class Noise(GeneratedDataset):
    """The tutorial's data: ``randn`` images and uniformly random labels. Nothing can learn
    it (val pixel accuracy stays at chance, 1 / num_classes), so it is a negative control."""

    Params = NoiseParams
    name = "noise"

    def _info(self) -> DatasetInfo:
        p = self.params
        names = ("background", *(f"class{i}" for i in range(1, p.num_classes)))
        return DatasetInfo(
            self.name, p.num_classes, p.in_channels, names, (p.image_size, p.image_size)
        )

    def generate(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        p = self.params
        small = p.image_size // p.label_stride
        images, masks = [], []
        for index in indices:
            gen = torch.Generator().manual_seed(sample_seed(self.seed, index))
            images.append(torch.randn(p.in_channels, p.image_size, p.image_size, generator=gen))
            masks.append(torch.randint(0, p.num_classes, (small, small), generator=gen))
        mask = (
            torch.stack(masks)
            .repeat_interleave(p.label_stride, 1)
            .repeat_interleave(p.label_stride, 2)
        )
        return torch.stack(images), mask
