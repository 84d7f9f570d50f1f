"""Resolve an experiment config: open the dataset, fill the model's data-dependent axes,
validate the combined model config. Everything that can be wrong with the input fails
here, before any MLflow run exists."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from latentseg.config import ExperimentConfig, ModelConfig, ModelSpec, model_overrides
from latentseg.data import SegmentationDataset, SplitSizes, create_dataset
from latentseg.errors import ConfigError, DatasetError, LatentSegError, RegistryError
from latentseg.loading import Provenance
from latentseg.models import MODELS, model_config


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; an explicit device must be available."""
    mps = getattr(torch.backends, "mps", None)
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": bool(mps and mps.is_available()),
    }
    if name == "auto":
        return torch.device(next(kind for kind in ("cuda", "mps", "cpu") if available[kind]))
    if not available.get(name, False):
        usable = ", ".join(kind for kind, ok in available.items() if ok)
        raise ConfigError(
            f"train.device is '{name}' but no {name.upper()} device is available here; use 'auto' or one of: {usable}"
        )
    return torch.device(name)


@dataclass
class Prepared:
    config: ExperimentConfig  # with the model section fully resolved (every key set)
    variant: str
    overrides: dict[str, Any]  # what create_model(variant, **overrides) needs
    model_config: ModelConfig
    dataset: SegmentationDataset
    source: str


_RECENT_DATASETS: dict[str, SegmentationDataset] = {}  # key -> dataset, most recent last
_KEEP = 2


def _open_dataset(
    name: str, sizes: SplitSizes, seed: int, params: dict[str, Any]
) -> SegmentationDataset:
    """The dataset for these settings, reused across runs in one process: a study's seeds and
    trials share their data, so its splits are generated (and cached) once, not per run."""
    key = json.dumps([name, sizes.model_dump(), seed, params], sort_keys=True, default=str)
    dataset = _RECENT_DATASETS.pop(key, None) or create_dataset(
        name, split_sizes=sizes, seed=seed, **params
    )
    _RECENT_DATASETS[key] = dataset
    while len(_RECENT_DATASETS) > _KEEP:
        _RECENT_DATASETS.pop(next(iter(_RECENT_DATASETS)))
    return dataset


def prepare(config: ExperimentConfig, source: str | Provenance = "<config>") -> Prepared:
    """Open the dataset and resolve the model. Errors name the file, the keys involved and
    where each key's value came from (``source``: a file name, or a ``Provenance`` that knows
    the lines and ``--set`` flags)."""
    origin = source if isinstance(source, Provenance) else Provenance(source)
    data = config.data
    sizes = SplitSizes(train=data.train_size, val=data.val_size, test=data.test_size)
    try:
        dataset = _open_dataset(data.dataset, sizes, data.seed, data.params)
    except LatentSegError as exc:
        detail = str(exc)
        prefix = (
            ""
            if detail.startswith("data.")
            else "data.dataset: "
            if isinstance(exc, RegistryError)
            else "data: "
        )
        raise type(exc)(origin.error(f"{prefix}{detail}")) from None
    info = dataset.info
    lengths = {split: len(dataset.split(split)) for split in ("train", "val", "test")}
    empty = [split for split, length in lengths.items() if length == 0]
    if empty:
        raise DatasetError(
            origin.error(
                f"data: dataset '{data.dataset}' has no samples in split(s) {', '.join(empty)}"
            )
        )
    if data.batch_size > lengths["train"]:
        raise ConfigError(
            origin.error(
                f"data.batch_size ({data.batch_size}) is larger than the train split "
                f"({lengths['train']} samples; data.train_size {data.train_size})"
            )
        )
    # The resolved config records the sizes the run really used (a real dataset's defaults
    # are "all of it"), so runs, hashes and reports compare like with like.
    data = data.model_copy(update={f"{split}_size": length for split, length in lengths.items()})

    overrides = model_overrides(config.model)
    for key, value in (("in_channels", info.in_channels), ("num_classes", info.num_classes)):
        if key not in overrides:
            overrides[key] = value
        elif overrides[key] != value:
            raise ConfigError(
                origin.error(
                    f"model.{key} is {overrides[key]} but data.dataset '{info.name}' has "
                    f"{value}; remove the key to take it from the data"
                )
            )
    variant = MODELS.canonical(config.model.variant)  # a renamed variant: its name now
    try:
        resolved_model = model_config(variant, **overrides)
    except LatentSegError as exc:
        raise type(exc)(origin.error(str(exc), "model")) from None
    try:
        resolve_device(config.train.device)
    except ConfigError as exc:
        raise ConfigError(origin.error(str(exc))) from None
    spec = ModelSpec(variant=variant, **resolved_model.model_dump())
    resolved = config.model_copy(update={"model": spec, "data": data})
    return Prepared(resolved, variant, overrides, resolved_model, dataset, origin.source)
