"""``digits``: scenes of real handwritten digits, from the 1,797 8x8 images that ship inside
scikit-learn (``sklearn.datasets.load_digits``; nothing is downloaded).

Each scene pastes a few digits, each upscaled to a random size, at random places on a noisy,
textured canvas; a pixel's class is its digit + 1 (background 0, 11 classes), the digit drawn
last winning where two overlap. The 1,797 source images are split once, by a fixed seeded
permutation, into disjoint train / val / test pools (70 / 15 / 15 %): a val or test scene
never shows a digit image that training saw, only other people's handwriting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache, partial

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from latentseg.config import StrictModel
from latentseg.data.base import DatasetInfo, sample_seed
from latentseg.data.synthetic import GeneratedDataset

POOL_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
POOL_SEED = 1797  # fixed: the pools never change with the data seed


@cache
def digit_images() -> tuple[Tensor, Tensor]:
    """The 1,797 scikit-learn digits as ``[N, 8, 8]`` float in [0, 1] and ``[N]`` labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0
    return images, torch.as_tensor(digits.target, dtype=torch.long)


@cache
def digit_pools() -> dict[str, Tensor]:
    """Disjoint indices into ``digit_images()`` for each split."""
    count = digit_images()[0].shape[0]
    order = torch.randperm(count, generator=torch.Generator().manual_seed(POOL_SEED))
    n_train = round(count * POOL_FRACTIONS["train"])
    n_val = round(count * POOL_FRACTIONS["val"])
    return {
        "train": order[:n_train].sort().values,
        "val": order[n_train : n_train + n_val].sort().values,
        "test": order[n_train + n_val :].sort().values,
    }


class DigitsParams(StrictModel):
    image_size: int = Field(
        64, ge=16, le=512, description="Canvas height and width (a multiple of 4)."
    )
    min_digits: int = Field(1, ge=1, description="Fewest digits per scene.")
    max_digits: int = Field(4, ge=1, le=16, description="Most digits per scene.")
    min_scale: float = Field(
        0.25, gt=0, le=1, description="Smallest digit side, as a fraction of the canvas."
    )
    max_scale: float = Field(
        0.45, gt=0, le=1, description="Largest digit side, as a fraction of the canvas."
    )
    threshold: float = Field(
        0.3, gt=0, lt=1, description="Ink level (0..1) above which a digit pixel gets its class."
    )
    noise: float = Field(0.1, ge=0, description="Std of the per-pixel Gaussian noise.")
    texture: float = Field(0.12, ge=0, description="Amplitude of the background's grating.")
    cache: bool = Field(True, description="Keep generated splits in memory when they fit in 1 GiB.")

    @field_validator("image_size")
    @classmethod
    def _multiple_of_4(cls, value: int) -> int:
        if value % 4:
            raise ValueError(f"must be a multiple of 4 (the model's stride), got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> DigitsParams:
        if self.min_digits > self.max_digits:
            raise ValueError(f"min_digits ({self.min_digits}) > max_digits ({self.max_digits})")
        if self.min_scale > self.max_scale:
            raise ValueError(f"min_scale ({self.min_scale}) > max_scale ({self.max_scale})")
        return self


_TRIES = 4  # placements tried per digit; the first that barely overlaps earlier digits wins
_PER_DIGIT = 3 + 2 * _TRIES + 1  # pick, scale, ink, TRIES x (x, y), (spare)
_BG = 4  # base level, grating frequency, angle, phase


class Digits(GeneratedDataset):
    """Handwritten-digit scenes; 11 classes (background + digits 0-9), one grey channel."""

    Params = DigitsParams
    name = "digits"

    def _info(self) -> DatasetInfo:
        size = self.params.image_size
        names = ("background", *(f"digit{d}" for d in range(10)))
        return DatasetInfo(self.name, 11, 1, names, (size, size))

    def _generator(self, split: str) -> Callable[[Sequence[int]], tuple[Tensor, Tensor]]:
        """Each split's scenes draw their digits from that split's pool."""
        return partial(self.generate, split=split)

    def source_indices(self, split: str, indices: Sequence[int]) -> list[list[int]]:
        """Which of the 1,797 digit images each scene (global index) uses: for tests and audits."""
        pool = digit_pools()[split]
        out = []
        for index in indices:
            u = self._draws(index)
            count = self._count(u)
            out.append(
                [
                    int(pool[int(u[_BG + k * _PER_DIGIT] * len(pool)) % len(pool)])
                    for k in range(count)
                ]
            )
        return out

    def _draws(self, index: int) -> Tensor:
        gen = torch.Generator().manual_seed(sample_seed(self.seed, index))
        return torch.rand(_BG + self.params.max_digits * _PER_DIGIT, generator=gen)

    def _count(self, u: Tensor) -> int:
        p = self.params
        span = p.max_digits - p.min_digits + 1
        return p.min_digits + min(int(u[-1] * span), span - 1)

    @staticmethod
    def _place(
        mask: Tensor, inside: Tensor, draws: Tensor, side: int, size: int
    ) -> tuple[int, int]:
        """Top-left corner: the first of ``_TRIES`` drawn places where under 10% of the glyph
        covers earlier digits, else the least-covered one."""
        best, best_overlap = (0, 0), None
        room = size - side + 1
        for t in range(_TRIES):
            left, top = int(draws[2 * t] * room), int(draws[2 * t + 1] * room)
            covered = (mask[top : top + side, left : left + side][inside] > 0).float().mean().item()
            if covered < 0.1:
                return top, left
            if best_overlap is None or covered < best_overlap:
                best, best_overlap = (top, left), covered
        return best

    def generate(self, indices: Sequence[int], split: str) -> tuple[Tensor, Tensor]:
        """Images ``[B, 1, H, W]`` (normalised) and masks ``[B, H, W]`` for global indices."""
        p = self.params
        size = p.image_size
        digits, labels = digit_images()
        pool = digit_pools()[split]
        xs, ys = self._grid
        images, masks = [], []
        for index in indices:
            gen = torch.Generator().manual_seed(sample_seed(self.seed, index) ^ 0x5EED)
            u = self._draws(index)
            base, freq, angle, phase = u[0].item(), u[1].item(), u[2].item(), u[3].item()
            proj = xs * math.cos(math.pi * angle) + ys * math.sin(math.pi * angle)
            canvas = (
                0.1
                + 0.2 * base
                + p.texture * 0.5 * torch.sin(2 * math.pi * ((2 + 8 * freq) * proj + phase))
            )
            mask = torch.zeros(size, size, dtype=torch.long)
            for k in range(self._count(u)):
                d = u[_BG + k * _PER_DIGIT : _BG + (k + 1) * _PER_DIGIT]
                source = int(pool[int(d[0] * len(pool)) % len(pool)])
                side = max(
                    8, round(size * (p.min_scale + (p.max_scale - p.min_scale) * d[1].item()))
                )
                side = min(side, size)
                glyph = F.interpolate(
                    digits[source][None, None],
                    size=(side, side),
                    mode="bilinear",
                    align_corners=False,
                )[0, 0].clamp(0, 1)
                inside = glyph > p.threshold
                top, left = self._place(mask, inside, d[3 : 3 + 2 * _TRIES], side, size)
                ink = 0.7 + 0.3 * d[2].item()
                region = canvas[top : top + side, left : left + side]
                canvas[top : top + side, left : left + side] = torch.where(
                    inside, ink * glyph.clamp(min=p.threshold), region * (1 - glyph) + ink * glyph
                )
                mask[top : top + side, left : left + side][inside] = int(labels[source]) + 1
            image = canvas + p.noise * torch.randn(size, size, generator=gen)
            images.append(((image.clamp(0, 1) - 0.5) / 0.25)[None])
            masks.append(mask)
        return torch.stack(images), torch.stack(masks)
