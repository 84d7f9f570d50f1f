"""``folder``: your own images and masks.

Layout (stems pair an image with its mask)::

    ROOT/images/<stem>.png|.jpg|.jpeg   RGB or grey
    ROOT/masks/<stem>.png               class indices: single-channel or palette PNG
                                        (RGB masks too, when classes.yaml lists colours)
    ROOT/classes.yaml                   optional: names, colours, ignore_index
    ROOT/splits.yaml                    optional: {train: [stems], val: [...], test: [...]};
                                        without it, a seeded split by val/test fractions

Every file is read and checked when the dataset opens (before any MLflow run exists), and
loaded into memory at ``image_size``. The reading and checking is
:mod:`latentseg.data.folder_scan`'s (``scan_folder``, also what ``latentseg datasets check``
runs: it collects every problem instead of stopping at the first); this module is the
dataset built from a clean scan.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from latentseg.config import StrictModel
from latentseg.data.base import (
    SPLITS,
    DatasetInfo,
    SegmentationDataset,
    SplitSizes,
    cap_split,
    validate_params,
)
from latentseg.data.folder_scan import (  # noqa: F401 - the folder format's names, as before
    SHOWN,
    SPLITS_FILE,
    ClassesFile,
    FolderScan,
    Problem,
    scan_folder,
    summarize_problems,
)
from latentseg.data.images import (
    DEFAULT_MAX_PIXELS,
    Augment,
    ImageSplit,
    MaxPixels,
    parse_size,
)
from latentseg.errors import DatasetError


class FolderParams(StrictModel):
    root: str = Field(
        description="Directory with images/ and masks/ (relative paths: from the working directory)."
    )
    image_size: int | tuple[int, int] | None = Field(
        None,
        description="Fixed size, a multiple of 4 or [height, width]; null = the images' own size (then they must all share it).",
    )  # noqa: UP045
    fit: Literal["resize", "crop"] = Field(
        "resize",
        description="How images reach image_size: resize (stretch) or crop (scale the shorter side, centre-crop).",
    )
    channels: Literal[1, 3] | None = Field(
        None, description="1 (grey) or 3 (RGB); null = 1 when every image is grey, else 3."
    )  # noqa: UP045
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of images for val when there is no splits.yaml."
    )
    test_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of images for test when there is no splits.yaml."
    )
    ignore_index: int | None = Field(
        None, ge=0, le=65535, description="Ignore index; overrides classes.yaml's."
    )  # noqa: UP045
    augment: Augment = Field(default_factory=Augment, description="Train-split augmentations.")
    workers: int = Field(4, ge=1, le=64, description="Threads that decode files.")
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS

    @model_validator(mode="after")
    def _check(self) -> FolderParams:
        parse_size(self.image_size, "image_size")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave some images for train")
        return self


def load_folder(p: FolderParams) -> FolderScan:
    """Scan the folder with ``p`` and keep every clean pair fitted to ``p.image_size``."""
    size = parse_size(p.image_size, "image_size")
    return scan_folder(
        p.root,
        ignore_index=p.ignore_index,
        size=size,
        fit=p.fit,
        load=True,
        workers=p.workers,
        max_pixels=p.max_pixels,
    )


class Folder(SegmentationDataset):
    """Images and masks from a directory (see the module docs for the layout)."""

    Params = FolderParams

    def __init__(self, *, split_sizes: SplitSizes | None = None, seed: int = 0, **params) -> None:
        p = validate_params(FolderParams, params, "folder")
        self._open(load_folder(p), p, split_sizes, seed)

    @classmethod
    def from_scan(
        cls, scan: FolderScan, params: FolderParams, split_sizes: SplitSizes | None, seed: int
    ) -> Folder:
        """The dataset from a ``load_folder`` scan (``datasets check`` reads each file once)."""
        dataset = cls.__new__(cls)
        dataset._open(scan, params, split_sizes, seed)
        return dataset

    def _open(
        self, scan: FolderScan, p: FolderParams, split_sizes: SplitSizes | None, seed: int
    ) -> None:
        self.params = p
        sizes = split_sizes or SplitSizes()
        size = parse_size(p.image_size, "image_size")
        self.root = scan.root
        _refuse_problems(scan)
        if size is None:
            size = _common_size(scan)
        channels = p.channels or (1 if all(scan.grey.values()) else 3)
        stems = self._split_stems(scan, seed)
        self.info = DatasetInfo(
            f"folder:{scan.root.name}",
            scan.num_classes,
            channels,
            scan.class_names,
            (int(size[0]), int(size[1])),
            scan.ignore_index,
        )
        self.colours = (
            tuple(map(tuple, scan.classes.colours))
            if scan.classes and scan.classes.colours
            else None
        )
        self._splits: dict[str, ImageSplit] = {}
        self.notes: list[str] = []  # what the run should know (a capped split size)
        for name in SPLITS:
            chosen = cap_split(
                stems[name], getattr(sizes, name), name, f"folder {scan.root}", self.notes
            )
            self._splits[name] = self._image_split(scan, name, chosen, channels)

    def _image_split(
        self, scan: FolderScan, name: str, chosen: list[str], channels: int
    ) -> ImageSplit:
        """The split ``name`` of the ``chosen`` stems, as tensors with ``channels``."""
        images = (
            torch.from_numpy(np.stack([_channels(scan.samples[s][0], channels) for s in chosen]))
            .permute(0, 3, 1, 2)
            .contiguous()
        )
        masks = torch.from_numpy(np.stack([scan.samples[s][1] for s in chosen]).astype(np.int32))
        ignore = scan.ignore_index
        return ImageSplit(
            images,
            masks,
            chosen,
            augment=self.params.augment if name == "train" else None,
            pad_label=ignore if ignore is not None else 0,
        )

    def _split_stems(self, scan: FolderScan, seed: int) -> dict[str, list[str]]:
        p = self.params
        if scan.splits is not None:
            return scan.splits
        order = [
            scan.stems[i]
            for i in torch.randperm(
                len(scan.stems), generator=torch.Generator().manual_seed(seed)
            ).tolist()
        ]
        n = len(order)
        n_test = max(1, round(n * p.test_fraction)) if p.test_fraction else 0
        n_val = max(1, round(n * p.val_fraction)) if p.val_fraction else 0
        if n - n_val - n_test < 1 or not n_val or not n_test:
            raise DatasetError(
                f"{scan.root}: {n} image(s) cannot make train, val and test splits "
                f"(val_fraction {p.val_fraction}, test_fraction {p.test_fraction}); add images "
                f"or write {SPLITS_FILE}"
            )
        # seeded order (not sorted): a size cap then takes a random subset, not the first names
        return {
            "test": order[:n_test],
            "val": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
        }


def _refuse_problems(scan: FolderScan) -> None:
    if scan.problems:
        raise DatasetError(
            f"folder dataset {scan.root} has {len(scan.problems)} problem(s):\n"
            f"{scan.summary()}\n"
            f"`latentseg datasets check {scan.root}` lists them all with the class histogram"
        )


def _common_size(scan: FolderScan) -> tuple[int, int]:
    """The images' own (h, w), when they all share one that the models take."""
    native = Counter(scan.sizes.values())
    if len(native) > 1:
        (common, _), (other, _) = native.most_common(2)
        odd = next(s for s, v in scan.sizes.items() if v == other)
        raise DatasetError(
            f"{scan.root}: images differ in size ({common[1]}x{common[0]} and e.g. "
            f"images/{odd}: {other[1]}x{other[0]}); set data.params.image_size"
        )
    size = next(iter(native))
    try:
        parse_size(list(size), "the images' own size")
    except ValueError as exc:
        raise DatasetError(f"{scan.root}: {exc}; set data.params.image_size") from None
    return size


def _channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[2] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    weights = np.array([0.299, 0.587, 0.114])
    return np.clip(image @ weights, 0, 255).astype(np.uint8)[..., None]


__all__ = ["ClassesFile", "Folder", "FolderParams", "FolderScan", "Problem", "scan_folder"]
