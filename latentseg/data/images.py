"""Shared machinery of the real-image datasets (``folder``, ``voc``, ``oxford-pet``): reading
images and masks with Pillow, fitting them to a fixed size, an in-memory split, and joint
image+mask augmentations.

Images are held as uint8 at the target size and normalised per batch to ``(x - 0.5) / 0.25``
(the scale of the synthetic datasets); masks as int32, so any ignore value (255, 65535) survives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field, model_validator
from torch import Tensor

from latentseg.config import StrictModel
from latentseg.data.base import Split, sample_seed

Size = tuple[int, int]  # (height, width)


class Augment(StrictModel):
    """Augmentations of the train split, applied to image and mask together."""

    hflip: float = Field(0.0, ge=0, le=1, description="Probability of a horizontal flip.")
    vflip: float = Field(0.0, ge=0, le=1, description="Probability of a vertical flip.")
    scale: tuple[float, float] = Field(
        (1.0, 1.0),
        description="Random zoom factor range [low, high]: above 1 zooms in, below 1 zooms out (the border is padded; masks with the ignore index, or background without one).",
    )
    crop: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Random crop: keep a box of this fraction of each side or more, at a random place, resized back to the full size; 1 = off.",
    )

    @model_validator(mode="after")
    def _check(self) -> Augment:
        low, high = self.scale
        if not 0 < low <= high <= 8:
            raise ValueError(
                f"scale must be [low, high] with 0 < low <= high <= 8, got {self.scale}"
            )
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.hflip or self.vflip or self.scale != (1.0, 1.0) or self.crop < 1)


def parse_size(value: int | Sequence[int] | None, what: str) -> Size | None:
    """``64`` or ``[h, w]`` -> ``(h, w)``, each a multiple of 4 (the model's stride)."""
    if value is None:
        return None
    size = (value, value) if isinstance(value, int) else tuple(value)
    if len(size) != 2 or any(s < 4 or s % 4 for s in size):
        raise ValueError(f"{what} must be a multiple of 4, or [height, width] of such, got {value}")
    return size  # type: ignore[return-value]


def to_rgb_or_grey(image: Image.Image) -> np.ndarray:
    """``[H, W, 3]`` or ``[H, W, 1]`` uint8 from any Pillow mode (alpha dropped)."""
    if image.mode in ("L", "1"):
        return np.asarray(image.convert("L"))[..., None]
    if image.mode in ("I;16", "I", "F"):  # 16-bit or float grey: scale to 8 bits
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        return np.clip(array / peak * 255, 0, 255).astype(np.uint8)[..., None]
    if image.mode == "LA":
        return np.asarray(image.convert("L"))[..., None]
    return np.asarray(image.convert("RGB"))


class BadMask(ValueError):
    """A mask that decodes but cannot be read as class labels (mode, unknown colour)."""


def mask_labels(mask: Image.Image, colours: Sequence[Sequence[int]] | None) -> np.ndarray:
    """Class indices ``[H, W]`` (int64) from a single-channel, palette or (with ``colours``)
    RGB mask. Raises ``ValueError`` with the reason for a mask it cannot read as labels."""
    if mask.mode in ("P", "L", "I", "I;16", "1"):
        return np.asarray(mask).astype(np.int64)
    if mask.mode in ("RGB", "RGBA"):
        if not colours:
            raise BadMask(
                f"mask is {mask.mode}: save it as a single-channel or palette PNG of class "
                "indices, or list the class colours in classes.yaml"
            )
        rgb = np.asarray(mask.convert("RGB")).astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(colours)}
        labels = np.full(code.shape, -1, dtype=np.int64)
        for value, index in table.items():
            labels[code == value] = index
        if (labels < 0).any():
            unknown = np.unique(code[labels < 0])[:3]
            shown = ", ".join(f"({v >> 16}, {(v >> 8) & 255}, {v & 255})" for v in unknown)
            raise BadMask(f"mask colour(s) {shown} are not in classes.yaml colours")
        return labels
    raise BadMask(f"mask mode {mask.mode} is not a single-channel, palette or RGB image")


def fit_pair(
    image: np.ndarray, labels: np.ndarray, size: Size, mode: Literal["resize", "crop"]
) -> tuple[np.ndarray, np.ndarray]:
    """Image ``[h, w, C]`` and labels ``[h, w]`` to ``size``: ``resize`` stretches both
    (bilinear / nearest); ``crop`` scales the image (keeping its aspect) until it covers
    ``size``, then centre-crops."""
    height, width = image.shape[:2]
    target_h, target_w = size
    if (height, width) == (target_h, target_w):
        return image, labels
    if mode == "crop":
        scale = max(target_h / height, target_w / width)
        scaled = (max(target_h, round(height * scale)), max(target_w, round(width * scale)))
    else:
        scaled = (target_h, target_w)
    img = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    img = np.asarray(img.resize((scaled[1], scaled[0]), Image.BILINEAR))
    img = img[..., None] if img.ndim == 2 else img
    lab = np.asarray(
        Image.fromarray(labels.astype(np.int32)).resize((scaled[1], scaled[0]), Image.NEAREST)
    ).astype(np.int64)
    top, left = (scaled[0] - target_h) // 2, (scaled[1] - target_w) // 2
    return (
        img[top : top + target_h, left : left + target_w],
        lab[top : top + target_h, left : left + target_w],
    )


def normalise(images: Tensor) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 on the synthetic datasets' scale."""
    return (images.float() / 255 - 0.5) / 0.25


class ImageSplit(Split):
    """A split of fixed-size images held in memory: ``images`` uint8 ``[N, C, H, W]``,
    ``masks`` int32 ``[N, H, W]``; ``names`` say where each sample came from."""

    def __init__(
        self,
        images: Tensor,
        masks: Tensor,
        names: Sequence[str],
        augment: Augment | None = None,
        pad_label: int = 0,
    ) -> None:
        self.images, self.masks, self.names = images, masks, list(names)
        self.augment = augment or Augment()
        self.pad_label = pad_label

    def __len__(self) -> int:
        return self.images.shape[0]

    def get_batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return normalise(self.images[index]), self.masks[index].long()

    def train_batch(self, indices: Sequence[int], seed: int) -> tuple[Tensor, Tensor]:
        images, masks = self.get_batch(indices)
        if not self.augment.enabled:
            return images, masks
        return augment_batch(images, masks, self.augment, seed, self.pad_label)


def augment_batch(
    images: Tensor, masks: Tensor, augment: Augment, seed: int, pad_label: int
) -> tuple[Tensor, Tensor]:
    """Flip, zoom and crop each sample by one affine map applied to image (bilinear) and mask
    (nearest); pixels from outside the source get image 0 (mid-grey) and ``pad_label``."""
    batch = images.shape[0]
    theta = torch.zeros(batch, 2, 3)
    for i in range(batch):
        gen = torch.Generator().manual_seed(sample_seed(seed, i))
        u = torch.rand(6, generator=gen).tolist()
        low, high = augment.scale
        zoom = math.exp(math.log(low) + (math.log(high) - math.log(low)) * u[0])
        keep = augment.crop + (1 - augment.crop) * u[1]
        extent = keep / zoom  # fraction of the source each output side shows
        slack = abs(1 - extent)
        theta[i, 0, 0] = extent * (-1 if u[2] < augment.hflip else 1)
        theta[i, 1, 1] = extent * (-1 if u[3] < augment.vflip else 1)
        theta[i, 0, 2] = slack * (2 * u[4] - 1)
        theta[i, 1, 2] = slack * (2 * u[5] - 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out_images = F.grid_sample(images, grid, mode="bilinear", align_corners=False)
    sampled = F.grid_sample(
        torch.cat([masks[:, None].float(), torch.ones_like(masks[:, None], dtype=torch.float)], 1),
        grid,
        mode="nearest",
        align_corners=False,
    )
    out_masks = sampled[:, 0].round().long()
    out_masks[sampled[:, 1] < 0.5] = pad_label
    return out_images, out_masks
