"""Hand-made folder datasets for the tests: JPEG images, palette-PNG masks, 3 classes
(background, square, disc) and an ignore band (255) around each object."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

PALETTE = [0, 0, 0, 220, 40, 40, 40, 200, 60]  # background, square, disc
IGNORE = 255


def scene(index: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its labels: a bright square (class 1) and a dark disc (class 2) on a
    mid-grey noisy background, with a 1-pixel ignore band around each object."""
    rng = np.random.default_rng(index)
    image = np.full((size, size, 3), 128.0) + rng.normal(0, 12, (size, size, 3))
    labels = np.zeros((size, size), dtype=np.uint8)
    ys, xs = np.mgrid[:size, :size]
    side = size // 4
    top, left = rng.integers(0, size // 2 - side, 2)
    square = (ys >= top) & (ys < top + side) & (xs >= left) & (xs < left + side)
    cy, cx = rng.integers(size // 2 + side // 2, size - side // 2, 2)
    disc = (ys - cy) ** 2 + (xs - cx) ** 2 <= (side // 2) ** 2
    for region, value, colour in ((square, 1, 230.0), (disc, 2, 25.0)):
        grown = np.zeros_like(region)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= np.roll(np.roll(region, dy, 0), dx, 1)
        labels[grown & ~region & (labels == 0)] = IGNORE
        labels[region] = value
        image[region] = colour
    return np.clip(image, 0, 255).astype(np.uint8), labels


def palette_png(labels: np.ndarray, path: Path) -> None:
    mask = Image.fromarray(labels, mode="P")
    mask.putpalette(PALETTE + [255, 255, 255] * (256 - len(PALETTE) // 3))
    mask.save(path)


def make_folder(
    root: Path,
    count: int = 24,
    size: int = 32,
    classes: bool = True,
    image_format: str = "jpg",
) -> Path:
    """``root/images/*.jpg`` + ``root/masks/*.png`` (palette) + ``classes.yaml``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, labels = scene(i, size)
        Image.fromarray(image).save(root / "images" / f"img{i:03d}.{image_format}", quality=95)
        palette_png(labels, root / "masks" / f"img{i:03d}.png")
    if classes:
        (root / "classes.yaml").write_text(
            yaml.safe_dump(
                {
                    "names": ["background", "square", "disc"],
                    "colours": [PALETTE[i : i + 3] for i in range(0, 9, 3)],
                    "ignore_index": IGNORE,
                }
            )
        )
    return root


def folder_config(root, **params) -> dict:
    """Config updates that train one epoch on the folder dataset at ``root`` (``params``
    added to its dataset params), every image of each split used."""
    return {
        "data": {
            "dataset": "folder",
            "params": {"root": str(root), **params},
            "batch_size": 4,
            "train_size": None,
            "val_size": None,
            "test_size": None,
        },
        "train": {"epochs": 1},
    }


def break_folder(root: Path) -> tuple[str, str]:
    """Resize one mask and put an out-of-range label in another; the two mask paths."""
    resized, bad_label = "masks/img003.png", "masks/img007.png"
    with Image.open(root / resized) as mask:
        palette = mask.getpalette()
        small = mask.resize((mask.width // 2, mask.height // 2), Image.NEAREST)
        small.putpalette(palette)
        small.save(root / resized)
    with Image.open(root / bad_label) as mask:
        labels = np.array(mask)
    labels[0, 0] = 7
    palette_png(labels, root / bad_label)
    return resized, bad_label
