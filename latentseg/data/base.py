"""The dataset protocol: a dataset has ``info`` and three disjoint splits of
``(image float32 [C, H, W], mask int64 [H, W])`` samples, readable a batch at a time."""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor

from latentseg.config import StrictModel
from latentseg.errors import ConfigError
from latentseg.validation import format_validation_error

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int  # including background
    in_channels: int
    class_names: tuple[str, ...]
    image_size: tuple[int, int]  # (H, W) of every sample
    ignore_index: int | None = None  # mask value excluded from the loss and every metric


class Split(torch.utils.data.Dataset, abc.ABC):
    """One split. Subclasses implement ``get_batch``; ``__getitem__`` serves torch's DataLoader.

    ``train_batch`` is what training reads: ``get_batch`` plus the split's augmentations, drawn
    from ``seed`` (the loop derives it from the run seed, epoch and step, so a resumed run
    replays the same augmentations). Splits without augmentations need not override it.
    """

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def get_batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """``(images [B, C, H, W] float32, masks [B, H, W] int64)`` for split-local indices."""

    def train_batch(self, indices: Sequence[int], seed: int) -> tuple[Tensor, Tensor]:
        """A training batch: ``get_batch(indices)`` with augmentations seeded by ``seed``."""
        return self.get_batch(indices)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        images, masks = self.get_batch([index])
        return images[0], masks[0]

    def batches(
        self, batch_size: int, shuffle_seed: int | None = None, drop_last: bool = False
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches in order, or shuffled by a seeded generator (deterministic per seed)."""
        if shuffle_seed is None:
            order = torch.arange(len(self))
        else:
            order = torch.randperm(len(self), generator=torch.Generator().manual_seed(shuffle_seed))
        stop = len(self) - (len(self) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.get_batch(order[start : start + batch_size].tolist())


class SegmentationDataset(abc.ABC):
    """A dataset: ``info`` plus ``split('train' | 'val' | 'test')``.

    That method is the whole contract: a ``Split`` for each name in ``SPLITS``, a
    ``ConfigError`` (``check_split``) for any other name. A subclass that holds its splits sets
    ``info`` and fills ``_splits`` (one ``Split`` per name) and inherits ``split``; one that
    makes them another way (on demand, say) overrides ``split``.
    """

    info: DatasetInfo
    _splits: dict[str, Split]

    def split(self, name: str) -> Split:
        check_split(name)
        splits = getattr(self, "_splits", None)
        if splits is None:
            raise NotImplementedError(
                f"{type(self).__name__} fills no _splits: set them, or override split()"
            )
        return splits[name]


class TensorSplit(Split):
    """A split held in memory: ``images [N, C, H, W]`` (any float or uint8 dtype; uint8 is
    scaled to [0, 1]) and ``masks [N, H, W]`` (any integer dtype)."""

    def __init__(self, images: Tensor, masks: Tensor) -> None:
        if images.ndim != 4 or masks.ndim != 3 or images.shape[0] != masks.shape[0]:
            raise ValueError(
                f"expected images [N, C, H, W] and masks [N, H, W], got {tuple(images.shape)} "
                f"and {tuple(masks.shape)}"
            )
        if images.shape[-2:] != masks.shape[-2:]:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but masks {tuple(masks.shape[-2:])}"
            )
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return self.images.shape[0]

    def get_batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        images = self.images[index]
        images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        return images, self.masks[index].long()


class TensorDataset(SegmentationDataset):
    """A dataset from in-memory tensors, the quickest way to write a plugin:
    ``TensorDataset(info, {"train": (images, masks), "val": ..., "test": ...})``."""

    def __init__(self, info: DatasetInfo, splits: dict[str, tuple[Tensor, Tensor]]) -> None:
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise ValueError(f"TensorDataset needs every split; missing {missing}")
        self.info = info
        self._splits = {name: TensorSplit(*splits[name]) for name in SPLITS}


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit generator seed for sample ``index`` of a dataset seeded ``seed``."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def check_split(name: str) -> None:
    if name not in SPLITS:
        raise ConfigError(f"unknown split '{name}'; expected one of {', '.join(SPLITS)}")


def validate_params(params_model: type[BaseModel], params: dict, dataset: str) -> BaseModel:
    """Validate ``data.params`` against a dataset's own strict params model."""
    try:
        return params_model.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(
                exc, params_model, f"dataset '{dataset}'", prefix=("data", "params")
            )
        ) from None


class SplitSizes(StrictModel):
    """Requested split sizes; ``None`` is the dataset's default: every sample of a real
    dataset, ``GENERATED_DEFAULTS`` for a generated one. A real dataset treats a size as a cap."""

    train: int | None = None  # noqa: UP045
    val: int | None = None  # noqa: UP045
    test: int | None = None  # noqa: UP045

    def get(self, split: str, default: int) -> int:
        """The requested size of ``split``, or ``default`` where none was requested."""
        check_split(split)
        value = getattr(self, split)
        return default if value is None else value

    def resolved(self, defaults: dict[str, int] | None = None) -> SplitSizes:
        """Every size set: requested ones kept, the rest from ``defaults``."""
        defaults = defaults or GENERATED_DEFAULTS
        return SplitSizes(**{s: self.get(s, defaults[s]) for s in SPLITS})

    def offsets(self) -> dict[str, tuple[int, int]]:
        """Global index ranges per split (generated datasets): splits never share an index."""
        sizes = self.resolved()
        train, val, test = sizes.train, sizes.val, sizes.test
        return {
            "train": (0, train),
            "val": (train, train + val),
            "test": (train + val, train + val + test),
        }


GENERATED_DEFAULTS = {"train": 2048, "val": 256, "test": 256}


def cap_split(
    items: list, requested: int | None, split: str, where: str, notes: list[str] | None = None
) -> list:
    """The first ``requested`` items of a real dataset's split (all when ``None``). A request
    larger than the split takes the whole split and adds a line saying so to ``notes`` (the
    run records them as its ``latentseg.data_notes`` tag)."""
    if requested is None:
        return items
    if requested > len(items):
        if notes is not None:
            notes.append(
                f"data.{split}_size {requested} capped at {len(items)}: {where} has "
                f"{len(items)} {split} samples"
            )
        return items
    return items[:requested]
