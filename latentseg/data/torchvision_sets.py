"""torchvision adapters: ``voc`` (Pascal VOC segmentation) and ``oxford-pet`` (Oxford-IIIT Pet
trimaps), read from a local root with torchvision's dataset classes, never downloaded.

torchvision is an optional extra (``pip install 'latentseg[torchvision]'``): it must match the
installed torch (see the README). The data layout is checked before torchvision is imported,
so a missing tree is reported with where to put it even where torchvision is absent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from latentseg.config import StrictModel
from latentseg.data.base import (
    SPLITS,
    DatasetInfo,
    SegmentationDataset,
    Split,
    SplitSizes,
    cap_split,
    check_split,
    validate_params,
)
from latentseg.data.images import (
    Augment,
    ImageSplit,
    fit_pair,
    mask_labels,
    parse_size,
    to_rgb_or_grey,
)
from latentseg.errors import DatasetError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC_IGNORE = 255  # object outlines in SegmentationClass


class TorchvisionParams(StrictModel):
    root: str = Field(description="Local directory holding the dataset (see the dataset's docs).")
    image_size: int | tuple[int, int] = Field(
        128, description="Fixed size, a multiple of 4 or [height, width]."
    )
    fit: Literal["resize", "crop"] = Field(
        "crop", description="resize (stretch) or crop (scale the shorter side, centre-crop)."
    )
    augment: Augment = Field(default_factory=Augment, description="Train-split augmentations.")
    workers: int = Field(4, ge=1, le=64, description="Threads that decode files.")


class VocParams(TorchvisionParams):
    year: Literal["2007", "2008", "2009", "2010", "2011", "2012"] = Field(
        "2012", description="VOC release."
    )
    val_fraction: float = Field(
        0.5, gt=0, lt=1, description="Share of VOC's 'val' used for val; the rest is test."
    )


class PetParams(TorchvisionParams):
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of 'trainval' held out for val; the rest is train."
    )


def import_torchvision_datasets():
    try:
        import torchvision.datasets as tv_datasets
    except Exception as exc:  # noqa: BLE001 - ImportError, or a torch/torchvision mismatch
        raise DatasetError(
            "this dataset reads through torchvision, which is not usable here "
            f"({type(exc).__name__}: {exc}). Install the optional extra with a torch it pairs "
            "with, e.g. pip install 'torch==2.14.1' 'torchvision==0.29.1' (see the README)"
        ) from None
    return tv_datasets


def _require(root: Path, needed: Sequence[str], what: str, how: str) -> None:
    missing = [n for n in needed if not (root / n).exists()]
    if missing:
        raise DatasetError(
            f"{what} not found under {root}: missing {', '.join(missing)}. {how} "
            "(latentseg never downloads)"
        )


def _load_all(
    get: Callable[[int], tuple[Image.Image, Image.Image]],
    indices: Sequence[int],
    size: tuple[int, int],
    fit: str,
    convert: Callable[[np.ndarray], np.ndarray],
    workers: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    def one(i: int):
        try:
            image, target = get(i)
        except Exception as exc:  # noqa: BLE001 - a missing or corrupt file: name it
            source = getattr(getattr(get, "__self__", None), "images", None) or getattr(
                getattr(get, "__self__", None), "_images", None
            )
            where = f" ({source[i]})" if source is not None and i < len(source) else ""
            raise DatasetError(
                f"cannot read sample {i}{where}: {type(exc).__name__}: {exc}"
            ) from None
        array = to_rgb_or_grey(image)
        if array.shape[2] == 1:
            array = np.repeat(array, 3, axis=2)
        return fit_pair(array, convert(mask_labels(target, None)), size, fit)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pairs = list(pool.map(one, indices))
    images = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int32))
    return images, masks


def _halves(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of ``range(count)``: (first ``fraction``, rest), each sorted."""
    if count < 2:
        raise DatasetError(f"a held-out split of {count} sample(s) cannot be divided in two")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, min(count - 1, round(count * fraction)))
    return sorted(order[:cut]), sorted(order[cut:])


class _TorchvisionDataset(SegmentationDataset):
    def split(self, name: str) -> Split:
        check_split(name)
        return self._splits[name]

    def _build(
        self,
        sources: dict[str, tuple[Callable, list[int]]],
        sizes: SplitSizes,
        params: TorchvisionParams,
        convert: Callable[[np.ndarray], np.ndarray],
        pad_label: int,
    ) -> None:
        size = parse_size(params.image_size, "image_size")
        self._splits = {}
        self.notes: list[str] = []  # what the run should know (a capped split size)
        for name in SPLITS:
            get, indices = sources[name]
            chosen = cap_split(
                indices, getattr(sizes, name), name, f"{self.info.name} {params.root}", self.notes
            )
            images, masks = _load_all(get, chosen, size, params.fit, convert, params.workers)
            self._splits[name] = ImageSplit(
                images,
                masks,
                [f"{name}[{i}]" for i in chosen],
                augment=params.augment if name == "train" else None,
                pad_label=pad_label,
            )


class Voc(_TorchvisionDataset):
    """Pascal VOC semantic segmentation (21 classes, outlines ignored) through
    ``torchvision.datasets.VOCSegmentation``. Train is VOC's 'train'; VOC's 'val' is split
    (seeded by data.seed) into val and test, since VOC's own test labels are not public."""

    Params = VocParams

    def __init__(self, *, split_sizes: SplitSizes | None = None, seed: int = 0, **params) -> None:
        self.params = p = validate_params(VocParams, params, "voc")
        root = Path(p.root).expanduser()
        base = root / "VOCdevkit" / f"VOC{p.year}"
        _require(
            base,
            [
                "JPEGImages",
                "SegmentationClass",
                "ImageSets/Segmentation/train.txt",
                "ImageSets/Segmentation/val.txt",
            ],
            f"Pascal VOC {p.year}",
            f"Extract VOCtrainval (e.g. VOCtrainval_11-May-2012.tar) so that {base}/JPEGImages exists; "
            f"data.params.root is the directory that holds VOCdevkit/",
        )
        tv = import_torchvision_datasets()
        train = tv.VOCSegmentation(str(root), year=p.year, image_set="train", download=False)
        held_out = tv.VOCSegmentation(str(root), year=p.year, image_set="val", download=False)
        val, test = _halves(len(held_out), p.val_fraction, seed)
        size = parse_size(p.image_size, "image_size")
        self.info = DatasetInfo("voc", 21, 3, VOC_CLASSES, size, VOC_IGNORE)
        self._build(
            {
                "train": (train.__getitem__, list(range(len(train)))),
                "val": (held_out.__getitem__, val),
                "test": (held_out.__getitem__, test),
            },
            split_sizes or SplitSizes(),
            p,
            lambda labels: labels,
            VOC_IGNORE,
        )


PET_IGNORE = 255


def pet_trimap_labels(trimap: np.ndarray) -> np.ndarray:
    """Oxford-IIIT Pet trimap (1 pet, 2 background, 3 border) -> 0 background, 1 pet, border
    ignored (255): the border is the annotators' 'not sure' band."""
    out = np.full(trimap.shape, PET_IGNORE, dtype=np.int64)
    out[trimap == 2] = 0
    out[trimap == 1] = 1
    return out


class OxfordPet(_TorchvisionDataset):
    """Oxford-IIIT Pet foreground segmentation (background, pet; the trimap's border band is
    ignored) through ``torchvision.datasets.OxfordIIITPet``. 'trainval' is split (seeded by
    data.seed) into train and val; test is the dataset's 'test'."""

    Params = PetParams

    def __init__(self, *, split_sizes: SplitSizes | None = None, seed: int = 0, **params) -> None:
        self.params = p = validate_params(PetParams, params, "oxford-pet")
        root = Path(p.root).expanduser()
        base = root / "oxford-iiit-pet"
        _require(
            base,
            ["images", "annotations/trimaps", "annotations/trainval.txt", "annotations/test.txt"],
            "Oxford-IIIT Pet",
            f"Extract images.tar.gz and annotations.tar.gz into {base}; data.params.root is the "
            "directory that holds oxford-iiit-pet/",
        )
        tv = import_torchvision_datasets()
        kwargs = {"target_types": "segmentation", "download": False}
        trainval = tv.OxfordIIITPet(str(root), split="trainval", **kwargs)
        test = tv.OxfordIIITPet(str(root), split="test", **kwargs)
        val, train = _halves(len(trainval), p.val_fraction, seed)
        size = parse_size(p.image_size, "image_size")
        self.info = DatasetInfo("oxford-pet", 2, 3, ("background", "pet"), size, PET_IGNORE)
        self._build(
            {
                "train": (trainval.__getitem__, train),
                "val": (trainval.__getitem__, val),
                "test": (test.__getitem__, list(range(len(test)))),
            },
            split_sizes or SplitSizes(),
            p,
            pet_trimap_labels,
            PET_IGNORE,
        )
