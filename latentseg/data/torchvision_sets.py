"""Pascal VOC (``voc``) and Oxford-IIIT Pet (``oxford-pet``), read from a local root in each
release's own on-disk layout with Pillow, never downloaded.

Each reader decodes exactly what torchvision's ``VOCSegmentation`` / ``OxfordIIITPet`` would:
images as RGB (grey, CMYK and RGBA files converted), VOC masks as palette indices, Pet trimaps
as they are stored. The module keeps its name from when it read through those classes;
torchvision is now needed only by ``download``, an optional way to fetch a release into the
layout the readers expect (``pip install 'latentseg[torchvision]'``, a torchvision that pairs
with the installed torch: see the README).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import Field

from latentseg.config import StrictModel
from latentseg.data.base import (
    SPLITS,
    DatasetInfo,
    SegmentationDataset,
    SplitSizes,
    cap_split,
    validate_params,
)
from latentseg.data.images import (
    DEFAULT_MAX_PIXELS,
    Augment,
    BadMask,
    FileProblem,
    ImageSplit,
    MaxPixels,
    PixelBudget,
    Size,
    TooLarge,
    parse_size,
    read_pair,
    reading,
)
from latentseg.errors import DatasetError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC_IGNORE = 255  # object outlines in SegmentationClass
PET_IGNORE = 255  # the trimaps' border band


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
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS


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


VOC_YEARS: tuple[str, ...] = get_args(VocParams.model_fields["year"].annotation)


# ---------------------------------------------------------------------- layouts


def _require(root: Path, needed: Sequence[str], what: str, how: str) -> None:
    missing = [n for n in needed if not (root / n).exists()]
    if missing:
        raise DatasetError(
            f"{what} not found under {root}: missing {', '.join(missing)}. {how} "
            "(latentseg never downloads on its own; where torchvision is installed, "
            "latentseg.data.torchvision_sets.download can fetch it)"
        )


def voc_dir(root: Path, year: str) -> Path:
    """``ROOT/VOCdevkit/VOC<year>``, checked. VOC 2011's archive (and torchvision's download
    of it) extracts to ``ROOT/TrainVal/VOCdevkit/VOC2011``: that is accepted too."""
    base = root / "VOCdevkit" / f"VOC{year}"
    moved = root / "TrainVal" / "VOCdevkit" / f"VOC{year}"
    if year == "2011" and not base.exists() and moved.exists():
        base = moved
    _require(
        base,
        [
            "JPEGImages",
            "SegmentationClass",
            "ImageSets/Segmentation/train.txt",
            "ImageSets/Segmentation/val.txt",
        ],
        f"Pascal VOC {year}",
        f"Extract VOCtrainval (e.g. VOCtrainval_11-May-2012.tar) so that {base}/JPEGImages exists; "
        f"data.params.root is the directory that holds VOCdevkit/",
    )
    return base


def pet_dir(root: Path) -> Path:
    """``ROOT/oxford-iiit-pet``, checked."""
    base = root / "oxford-iiit-pet"
    _require(
        base,
        ["images", "annotations/trimaps", "annotations/trainval.txt", "annotations/test.txt"],
        "Oxford-IIIT Pet",
        f"Extract images.tar.gz and annotations.tar.gz into {base}; data.params.root is the "
        "directory that holds oxford-iiit-pet/",
    )
    return base


def read_ids(path: Path) -> list[str]:
    """The sample ids a split file lists: each line's first field (VOC's lines are the id;
    Pet's are ``Name CLASS-ID SPECIES BREED-ID``), blank lines and ``#`` comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {_reason(exc)}") from None
    ids = [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise DatasetError(f"{path} lists no samples")
    return ids


@dataclass(frozen=True)
class Sample:
    """One listed sample: its id and where its image and mask are."""

    name: str
    image: Path
    mask: Path


def listed_samples(split_file: Path, images: Path, masks: Path) -> list[Sample]:
    """``images/<id>.jpg`` and ``masks/<id>.png`` for every id ``split_file`` lists; a listed
    file that does not exist raises ``DatasetError`` naming it (before anything decodes)."""
    samples = [
        Sample(name, images / f"{name}.jpg", masks / f"{name}.png") for name in read_ids(split_file)
    ]
    missing = [(s.name, p) for s in samples for p in (s.image, s.mask) if not p.is_file()]
    if missing:
        first_name, first_path = missing[0]
        more = f" (and {len(missing) - 1} more missing file(s))" if len(missing) > 1 else ""
        raise DatasetError(
            f"{first_path} does not exist, but {split_file} lists {first_name}{more}"
        )
    return samples


# ---------------------------------------------------------------------- decoding


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):  # its text repeats the path
        return "not an image Pillow can decode"
    text = " ".join(str(exc).split())  # one line, whatever the decoder said
    return (
        text if isinstance(exc, (OSError, BadMask, TooLarge)) else f"{type(exc).__name__}: {text}"
    )


def _check_mask_mode(path: Path) -> None:
    """A release's masks are palette or grey PNGs of class indices (read from the header)."""
    with Image.open(path) as mask:
        if mask.mode in ("RGB", "RGBA"):
            raise BadMask(
                f"mask is {mask.mode}: expected the release's palette or grey PNG of class "
                "indices (was it converted to colour?)"
            )


def read_sample(
    sample: Sample,
    size: Size,
    fit: Literal["resize", "crop"],
    convert: Callable,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    budget: PixelBudget | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A sample's image ``[h, w, 3]`` uint8 (grey, CMYK and RGBA converted to RGB, as
    torchvision's ``convert('RGB')`` does) and labels ``convert(mask)`` (a palette PNG's
    indices, never its colours), fitted to ``size``. Files above ``max_pixels`` are refused
    before decoding; ``budget`` bounds what the reading threads decode at once."""
    try:
        with reading(sample.mask):
            _check_mask_mode(sample.mask)
        pair = read_pair(
            sample.image, sample.mask, size=size, fit=fit, max_pixels=max_pixels, budget=budget
        )
    except FileProblem as exc:
        raise DatasetError(f"cannot read {exc.path}: {_reason(exc.cause)}") from None
    if pair.mask is None:
        (mh, mw), (ih, iw) = pair.mask_native, pair.native
        raise DatasetError(
            f"{sample.mask} is {mw}x{mh} but {sample.image} is {iw}x{ih} (width x height)"
        )
    image = pair.image if pair.image.shape[2] == 3 else np.repeat(pair.image, 3, axis=2)
    return image, convert(pair.mask)


def load_samples(
    samples: Sequence[Sample],
    size: Size,
    fit: Literal["resize", "crop"],
    convert: Callable[[np.ndarray], np.ndarray],
    workers: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 ``[N, 3, H, W]`` and masks int32 ``[N, H, W]``, decoded on ``workers``
    threads; the first unreadable sample raises, and samples not yet started are dropped."""
    if not samples:  # a requested split size of 0
        empty = torch.zeros((0, 3, *size), dtype=torch.uint8)
        return empty, torch.zeros((0, *size), dtype=torch.int32)
    budget = PixelBudget(max_pixels)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        pairs = list(
            pool.map(lambda s: read_sample(s, size, fit, convert, max_pixels, budget), samples)
        )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
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


def pet_trimap_labels(trimap: np.ndarray) -> np.ndarray:
    """Oxford-IIIT Pet trimap (1 pet, 2 background, 3 border) -> 0 background, 1 pet, border
    ignored (255): the border is the annotators' 'not sure' band."""
    out = np.full(trimap.shape, PET_IGNORE, dtype=np.uint8)
    out[trimap == 2] = 0
    out[trimap == 1] = 1
    return out


# ---------------------------------------------------------------------- datasets


class _ReleaseDataset(SegmentationDataset):
    """A dataset read from a release's split files, every split held in memory."""

    def _build(
        self,
        splits: dict[str, list[Sample]],
        sizes: SplitSizes,
        params: TorchvisionParams,
        convert: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        size = self.info.image_size
        self._splits = {}
        self.notes: list[str] = []  # what the run should know (a capped split size)
        for name in SPLITS:
            where = f"{self.info.name} {params.root}"
            chosen = cap_split(splits[name], getattr(sizes, name), name, where, self.notes)
            images, masks = load_samples(
                chosen, size, params.fit, convert, params.workers, params.max_pixels
            )
            self._splits[name] = ImageSplit(
                images,
                masks,
                [s.name for s in chosen],
                augment=params.augment if name == "train" else None,
                pad_label=self.info.ignore_index,
            )


class Voc(_ReleaseDataset):
    """Pascal VOC semantic segmentation (21 classes, outlines ignored) from
    ``ROOT/VOCdevkit/VOC<year>``: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``
    (palette indices) and ``ImageSets/Segmentation/{train,val}.txt``. Train is VOC's 'train';
    VOC's 'val' is split (seeded by data.seed) into val and test, since VOC's own test labels
    are not public."""

    Params = VocParams

    def __init__(self, *, split_sizes: SplitSizes | None = None, seed: int = 0, **params) -> None:
        self.params = p = validate_params(VocParams, params, "voc")
        base = voc_dir(Path(p.root).expanduser(), p.year)
        lists = base / "ImageSets" / "Segmentation"

        def listed(split_file: str) -> list[Sample]:
            return listed_samples(
                lists / split_file, base / "JPEGImages", base / "SegmentationClass"
            )

        train, held_out = listed("train.txt"), listed("val.txt")
        val, test = _halves(len(held_out), p.val_fraction, seed)
        size = parse_size(p.image_size, "image_size")
        self.info = DatasetInfo("voc", 21, 3, VOC_CLASSES, size, VOC_IGNORE)
        self._build(
            {
                "train": train,
                "val": [held_out[i] for i in val],
                "test": [held_out[i] for i in test],
            },
            split_sizes or SplitSizes(),
            p,
            lambda labels: labels,
        )


class OxfordPet(_ReleaseDataset):
    """Oxford-IIIT Pet foreground segmentation (background, pet; the trimap's border band is
    ignored) from ``ROOT/oxford-iiit-pet``: ``images/<name>.jpg``,
    ``annotations/trimaps/<name>.png`` and ``annotations/{trainval,test}.txt``. 'trainval' is
    split (seeded by data.seed) into train and val; test is the dataset's 'test'."""

    Params = PetParams

    def __init__(self, *, split_sizes: SplitSizes | None = None, seed: int = 0, **params) -> None:
        self.params = p = validate_params(PetParams, params, "oxford-pet")
        base = pet_dir(Path(p.root).expanduser())
        annotations = base / "annotations"

        def listed(split_file: str) -> list[Sample]:
            return listed_samples(
                annotations / split_file, base / "images", annotations / "trimaps"
            )

        trainval, test = listed("trainval.txt"), listed("test.txt")
        val, train = _halves(len(trainval), p.val_fraction, seed)
        size = parse_size(p.image_size, "image_size")
        self.info = DatasetInfo("oxford-pet", 2, 3, ("background", "pet"), size, PET_IGNORE)
        self._build(
            {
                "train": [trainval[i] for i in train],
                "val": [trainval[i] for i in val],
                "test": test,
            },
            split_sizes or SplitSizes(),
            p,
            pet_trimap_labels,
        )


# ---------------------------------------------------------------------- download (optional)


def import_torchvision_datasets():
    """``torchvision.datasets``, or a ``DatasetError`` saying why it is unusable and what to
    install."""
    try:
        import torchvision.datasets as tv_datasets
    except Exception as exc:  # noqa: BLE001 - ImportError, or a torch/torchvision mismatch
        raise DatasetError(
            "downloading needs torchvision, which is not usable here "
            f"({type(exc).__name__}: {' '.join(str(exc).split())}). Install the optional extra with a torch it "
            "pairs with, e.g. pip install 'torch==2.14.1' 'torchvision==0.29.1' (see the "
            "README), or fetch and extract the archives yourself"
        ) from None
    return tv_datasets


def download(name: Literal["voc", "oxford-pet"], root: str | Path, *, year: str = "2012") -> Path:
    """Fetch ``voc`` (VOCtrainval of ``year``: 2 GB for 2012) or ``oxford-pet`` (images and
    annotations: 0.8 GB) into ``root`` through torchvision's dataset classes, which write the
    layout the readers expect; returns the ``data.params.root`` to use. Optional: it needs the
    ``torchvision`` extra and the network. Raises ``DatasetError`` when torchvision is not
    usable, the download fails, or the result is not the expected layout."""
    if name not in ("voc", "oxford-pet"):
        raise DatasetError(f"cannot download '{name}': only 'voc' and 'oxford-pet'")
    if name == "voc" and year not in VOC_YEARS:
        raise DatasetError(f"VOC year '{year}' is not one of {', '.join(VOC_YEARS)}")
    tv = import_torchvision_datasets()
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    try:
        if name == "voc":
            tv.VOCSegmentation(str(root), year=year, image_set="train", download=True)
        else:
            tv.OxfordIIITPet(
                str(root), split="trainval", target_types="segmentation", download=True
            )
    except Exception as exc:  # noqa: BLE001 - network, disk, checksum: say which download
        raise DatasetError(f"downloading {name} into {root} failed: {_reason(exc)}") from None
    if name == "voc":
        voc_dir(root, year)
    else:
        pet_dir(root)
    return root
