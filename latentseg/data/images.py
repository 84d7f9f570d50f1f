"""Shared machinery of the real-image datasets (``folder``, ``voc``, ``oxford-pet``): reading
images and masks with Pillow, fitting them to a fixed size, an in-memory split, and joint
image+mask augmentations.

Images are held as uint8 at the target size and normalised per batch to ``(x - 0.5) / 0.25``
(the scale of the synthetic datasets); masks as int32, so any ignore value (255, 65535) survives.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field, model_validator
from torch import Tensor

from latentseg.config import StrictModel
from latentseg.data.base import Split, sample_seed

Size = tuple[int, int]  # (height, width)

# Images above this many pixels are refused (data.params.max_pixels): a 13000x13000 PNG is
# 0.5 MB on disk but 0.5 GB decoded, and several GB on its way to a 32x32 sample.
DEFAULT_MAX_PIXELS = 64_000_000
MaxPixels = Annotated[
    int,
    Field(
        ge=16,
        description="Largest image or mask (width x height) read; a larger file is refused, naming it. Decoding costs about 4 bytes a pixel, and files decoding at once share this budget.",
    ),
]  # data.params.max_pixels of every dataset read from image files


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
    """Class indices ``[H, W]`` from a single-channel, palette or (with ``colours``) RGB mask,
    in the narrowest integer type that holds them (uint8 for palette and 8-bit masks: a large
    mask costs one byte a pixel). Raises ``BadMask`` for a mask it cannot read as labels."""
    if mask.mode == "1":
        return np.asarray(mask).astype(np.uint8)
    if mask.mode in ("P", "L", "I", "I;16"):
        return np.asarray(mask)
    if mask.mode in ("RGB", "RGBA"):
        if not colours:
            raise BadMask(
                f"mask is {mask.mode}: save it as a single-channel or palette PNG of class "
                "indices, or list the class colours in classes.yaml"
            )
        rgb = np.asarray(mask.convert("RGB")).astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(colours)}
        labels = np.full(code.shape, -1, dtype=np.int32)
        for value, index in table.items():
            labels[code == value] = index
        if (labels < 0).any():
            unknown = np.unique(code[labels < 0])[:3]
            shown = ", ".join(f"({v >> 16}, {(v >> 8) & 255}, {v & 255})" for v in unknown)
            raise BadMask(f"mask colour(s) {shown} are not in classes.yaml colours")
        return labels.astype(np.uint8) if len(colours) <= 256 else labels
    raise BadMask(f"mask mode {mask.mode} is not a single-channel, palette or RGB image")


def fit_geometry(native: Size, size: Size, mode: Literal["resize", "crop"]) -> tuple[Size, Size]:
    """Where an image of ``native`` (h, w) goes on its way to ``size``: the size it is scaled
    to, and the (top, left) corner of the centre crop taken from that."""
    height, width = native
    target_h, target_w = size
    if mode == "crop":
        scale = max(target_h / height, target_w / width)
        scaled = (max(target_h, round(height * scale)), max(target_w, round(width * scale)))
    else:
        scaled = (target_h, target_w)
    return scaled, ((scaled[0] - target_h) // 2, (scaled[1] - target_w) // 2)


def _place(array: np.ndarray, corner: Size, size: Size) -> np.ndarray:
    top, left = corner
    return array[top : top + size[0], left : left + size[1]]


def fit_labels(
    labels: np.ndarray | Image.Image,
    size: Size,
    mode: Literal["resize", "crop"],
    native: Size | None = None,
) -> np.ndarray:
    """Labels (``[h, w]`` array, or a palette or 8-bit mask as Pillow holds it) to ``size``
    (nearest), placed as an image of ``native`` size would be (default: their own size)."""
    if isinstance(labels, Image.Image):
        own, source = (labels.height, labels.width), labels
    else:
        own = labels.shape
        if own == tuple(size):
            return labels
        array = labels if labels.dtype in (np.uint8, np.int32) else labels.astype(np.int32)
        source = Image.fromarray(array)
    scaled, corner = fit_geometry(native or own, size, mode)
    if own == tuple(scaled):
        fitted = np.asarray(source)
    else:
        fitted = np.asarray(source.resize((scaled[1], scaled[0]), Image.NEAREST))
    return _place(fitted, corner, size)


def fit_image(
    image: Image.Image | np.ndarray,
    size: Size,
    mode: Literal["resize", "crop"],
    native: Size | None = None,
) -> np.ndarray:
    """An image (Pillow, or ``[h, w, C]`` uint8) to ``size`` (bilinear), placed as an image of
    ``native`` size would be (default: its own size; a JPEG decoded at reduced scale keeps the
    geometry of its full size)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    own = (image.height, image.width)
    if own == tuple(size) and native in (None, own):
        array = np.asarray(image)
    else:
        scaled, corner = fit_geometry(native or own, size, mode)
        array = _place(
            np.asarray(image.resize((scaled[1], scaled[0]), Image.BILINEAR)), corner, size
        )
    return array[..., None] if array.ndim == 2 else array


def label_histogram(labels: np.ndarray) -> dict[int, int]:
    """Label value -> pixels: counted in place for 8- and 16-bit labels (no sorted copy of a
    large mask), by ``np.unique`` otherwise."""
    if labels.dtype in (np.uint8, np.uint16):
        counts = np.bincount(labels.ravel(), minlength=1)
        present = np.flatnonzero(counts)
        return dict(zip(present.tolist(), counts[present].tolist(), strict=True))
    values, counts = np.unique(labels, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


class TooLarge(ValueError):
    """An image above the pixel limit (``data.params.max_pixels``)."""


def check_pixels(native: Size, max_pixels: int) -> None:
    """Raise ``TooLarge`` for an image of ``native`` (h, w) above ``max_pixels``."""
    height, width = native
    if height * width > max_pixels:
        raise TooLarge(
            f"{width}x{height} is {height * width / 1e6:.1f} megapixels, above the limit of "
            f"{max_pixels:,} pixels (data.params.max_pixels; decoding takes about 4 bytes a "
            "pixel): downscale the file, or raise the limit"
        )


class PixelBudget:
    """At most ``pixels`` of images decoding at once across threads (an image above the
    budget waits until it decodes alone): reading many files in parallel stays within a
    bounded amount of memory, however large each file is."""

    def __init__(self, pixels: int) -> None:
        self.pixels, self._used = pixels, 0
        self._free = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.pixels)
        with self._free:
            self._free.wait_for(lambda: self._used + pixels <= self.pixels)
            self._used += pixels
        try:
            yield
        finally:
            with self._free:
                self._used -= pixels
                self._free.notify_all()


def _decoded_mode(image: Image.Image) -> Image.Image:
    """The image as Pillow ``L`` or ``RGB`` (alpha dropped; 16-bit and float grey scaled to
    8 bits, as ``to_rgb_or_grey`` does)."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("I;16", "I", "F"):
        return Image.fromarray(to_rgb_or_grey(image)[..., 0])
    return image.convert("L" if image.mode in ("1", "LA") else "RGB")


@dataclass
class Pair:
    """An image and its mask as read by ``read_pair``."""

    native: Size  # the image's (h, w) on disk
    mask_native: Size  # the mask's (h, w) on disk
    grey: bool
    histogram: dict[int, int]  # label value -> pixels, at the mask's native size
    image: np.ndarray  # [h, w, C] uint8 at the requested size (native when none)
    mask: np.ndarray | None  # labels at the requested size; None when the sizes disagree


class FileProblem(Exception):
    """Reading ``path`` failed with ``cause`` (``TooLarge``, ``BadMask``, Pillow's errors)."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(f"{path}: {cause}")
        self.path, self.cause = Path(path), cause


@contextmanager
def reading(path: Path) -> Iterator[None]:
    try:
        yield
    except FileProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure: the caller names the file
        raise FileProblem(path, exc) from exc


def read_pair(
    image_path: Path,
    mask_path: Path,
    *,
    size: Size | None,
    fit: Literal["resize", "crop"] = "resize",
    colours: Sequence[Sequence[int]] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    budget: PixelBudget | None = None,
) -> Pair:
    """Read an image and its mask, the image fitted to ``size`` (``None``: its own size),
    without holding more than one decoded copy of either: files above ``max_pixels`` are
    refused before decoding, a JPEG decodes at the smallest scale that still covers ``size``,
    and ``budget`` bounds what concurrent readers decode at once. Any failure raises
    ``FileProblem`` naming the file (its ``cause``: ``TooLarge``, ``BadMask``, Pillow's)."""
    with reading(image_path):
        img = Image.open(image_path)
    with img:
        with reading(image_path):
            native = (img.height, img.width)
            check_pixels(native, max_pixels)
        with reading(mask_path):
            msk = Image.open(mask_path)
        with msk:
            with reading(mask_path):
                mask_native = (msk.height, msk.width)
                check_pixels(mask_native, max_pixels)
            pixels = native[0] * native[1] + mask_native[0] * mask_native[1]
            with budget.hold(pixels) if budget else nullcontext():
                with reading(image_path):
                    grey = img.mode in ("L", "1", "LA", "I;16", "I", "F")
                    if size is not None and img.format == "JPEG":
                        covering, _ = fit_geometry(native, size, fit)
                        img.draft("L" if grey else "RGB", (covering[1], covering[0]))
                    image = fit_image(_decoded_mode(img), size or native, fit, native)
                with reading(mask_path):
                    histogram, mask = _read_mask(msk, colours, size, fit, native == mask_native)
    return Pair(native, mask_native, grey, histogram, image, mask)


def _read_mask(
    mask: Image.Image,
    colours: Sequence[Sequence[int]] | None,
    size: Size | None,
    fit: Literal["resize", "crop"],
    fits: bool,
) -> tuple[dict[int, int], np.ndarray | None]:
    """(histogram at native size, labels at ``size`` or native); a palette or 8-bit mask is
    counted and resized by Pillow without a copy at full size."""
    if mask.mode in ("P", "L"):
        counts = mask.histogram()[:256]
        histogram = {v: n for v, n in enumerate(counts) if n}
        if size is None:
            return histogram, np.asarray(mask)
        return histogram, fit_labels(mask, size, fit) if fits else None
    labels = mask_labels(mask, colours)
    histogram = label_histogram(labels)
    if size is None:
        return histogram, labels
    return histogram, fit_labels(labels, size, fit) if fits else None


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
