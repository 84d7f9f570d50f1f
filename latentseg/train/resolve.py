"""Resolve an experiment config: open the dataset, fill the model's data-dependent axes,
validate the combined model config. Everything that can be wrong with the input fails
here, before any MLflow run exists."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from latentseg.config import ExperimentConfig, ModelConfig, ModelSpec, model_overrides
from latentseg.data import SegmentationDataset, SplitSizes, create_dataset
from latentseg.errors import ConfigError, DatasetError, LatentSegError
from latentseg.models import model_config


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


def prepare(config: ExperimentConfig, source: str = "<config>") -> Prepared:
    """Open the dataset and resolve the model; errors name ``source`` and the key."""
    data = config.data
    sizes = SplitSizes(train=data.train_size, val=data.val_size, test=data.test_size)
    try:
        dataset = _open_dataset(data.dataset, sizes, data.seed, data.params)
    except LatentSegError as exc:
        detail = str(exc)
        prefix = "" if detail.startswith("data.") else "data: "
        raise type(exc)(f"{source}: {prefix}{detail}") from None
    info = dataset.info
    lengths = {s: len(dataset.split(s)) for s in ("train", "val", "test")}
    empty = [s for s, n in lengths.items() if n == 0]
    if empty:
        raise DatasetError(
            f"{source}: data: dataset '{data.dataset}' has no samples in split(s) {', '.join(empty)}"
        )
    if data.batch_size > lengths["train"]:
        raise ConfigError(
            f"{source}: data.batch_size ({data.batch_size}) is larger than the train split "
            f"({lengths['train']} samples)"
        )
    # The resolved config records the sizes the run really used (a real dataset's defaults
    # are "all of it"), so runs, hashes and reports compare like with like.
    data = data.model_copy(update={f"{s}_size": n for s, n in lengths.items()})

    overrides = model_overrides(config.model)
    for key, value in (("in_channels", info.in_channels), ("num_classes", info.num_classes)):
        if key not in overrides:
            overrides[key] = value
        elif overrides[key] != value:
            raise ConfigError(
                f"{source}: model.{key} is {overrides[key]} but dataset '{info.name}' has {value}; remove the key to take it from the data"
            )
    try:
        resolved_model = model_config(config.model.variant, **overrides)
    except LatentSegError as exc:
        raise type(exc)(f"{source}: {exc}") from None
    from latentseg.train.loop import resolve_device

    try:
        resolve_device(config.train.device)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    spec = ModelSpec(variant=config.model.variant, **resolved_model.model_dump())
    resolved = config.model_copy(update={"model": spec, "data": data})
    return Prepared(resolved, config.model.variant, overrides, resolved_model, dataset, source)
