"""A run's data as MLflow dataset inputs: one per split, so the run page lists them and the
runs table can show and filter by them (``datasets.name``, ``datasets.digest``,
``datasets.context``).

Nothing is read from the samples themselves: an input is described from the config and the
split's sample identifiers, so logging costs the same for 100 images or 100,000.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentseg.config import ExperimentConfig
from latentseg.data.base import SPLITS, SegmentationDataset, SplitSizes

if TYPE_CHECKING:  # mlflow is imported when a run is tracked, not with latentseg
    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput

# The input tag the MLflow UI reads as a dataset's role in the run. Its values here are the
# split names ('train', 'val', 'test') rather than MLflow's loose 'training'/'eval': they are
# what the run's metrics are named after (val_miou, test_miou), so one word finds both.
CONTEXT_TAG = "mlflow.data.context"

# Dataset params that change how samples are loaded, never which samples or what they hold
# (augmentations are the training recipe, recorded as run params; too large an image fails
# the run instead of changing its data): left out of the digest.
NOT_DATA_PARAMS = ("workers", "cache", "max_pixels", "augment")

DIGEST_LENGTH = 10  # hex characters; MLflow suggests at most 10


def dataset_inputs(config: ExperimentConfig, dataset: SegmentationDataset) -> list[DatasetInput]:
    """One ``mlflow.entities.DatasetInput`` per split of ``dataset`` as opened for ``config``
    (the resolved config, whose split sizes are the ones used): named after the dataset,
    tagged with the split as its context, with a source, a digest and a profile."""
    from mlflow.entities import DatasetInput, InputTag

    source_type, source = dataset_source(config, dataset)
    return [
        DatasetInput(
            dataset=_dataset_entity(config, dataset, split, source_type, source),
            tags=[InputTag(key=CONTEXT_TAG, value=split)],
        )
        for split in SPLITS
    ]


def log_dataset_inputs(client: MlflowClient, run_id: str, inputs: list[DatasetInput]) -> None:
    """Log ``inputs`` to the run. A store that refuses them (an old tracking server) costs
    the run its dataset list, not its training: the failure is a warning on stderr."""
    from mlflow.exceptions import MlflowException

    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as exc:
        print(f"warning: the run's datasets were not logged: {exc}", file=sys.stderr, flush=True)


def dataset_source(config: ExperimentConfig, dataset: SegmentationDataset) -> tuple[str, str]:
    """``(source_type, source JSON)`` as MLflow stores them: ``local`` with the data's
    directory for a dataset read from ``data.params.root``, else ``code``: the generator
    that made the samples, and the data seed it was given. Both are types MLflow's source
    registry reads back (``mlflow.data.get_source``); the UI shows a local source's path."""
    root = _root(dataset, config)
    if root is not None:
        return "local", json.dumps({"uri": root.as_uri()})
    builder = type(dataset)
    tags = {
        "latentseg.dataset": config.data.dataset,
        "latentseg.generator": f"{builder.__module__}.{builder.__qualname__}",
        "latentseg.data_seed": str(config.data.seed),
    }
    return "code", json.dumps({"tags": tags})


def dataset_digest(config: ExperimentConfig, dataset: SegmentationDataset, split: str) -> str:
    """A short hash of what decides the samples of ``split``: the dataset, its params (with
    the root as an absolute path), the data seed, the split's size and its sample
    identifiers. Two runs with the same digest trained (or were scored) on the same samples,
    unless files under the root changed in place: pixels are not hashed."""
    params = {k: v for k, v in _params(dataset, config).items() if k not in NOT_DATA_PARAMS}
    root = _root(dataset, config)
    if root is not None:
        params["root"] = str(root)
    info = dataset.info
    described = {
        "dataset": config.data.dataset,
        "params": params,
        "seed": config.data.seed,
        "split": split,
        "num_rows": len(dataset.split(split)),
        "samples": _sample_ids(config, dataset, split),
        "classes": list(info.class_names),
        "ignore_index": info.ignore_index,
        "in_channels": info.in_channels,
        "image_size": list(info.image_size),
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_LENGTH]


def _dataset_entity(
    config: ExperimentConfig,
    dataset: SegmentationDataset,
    split: str,
    source_type: str,
    source: str,
) -> Dataset:
    from mlflow.entities import Dataset

    info = dataset.info
    profile = {
        "num_rows": len(dataset.split(split)),
        "image_size": list(info.image_size),
        "in_channels": info.in_channels,
        "num_classes": info.num_classes,
    }
    return Dataset(
        name=info.name,
        digest=dataset_digest(config, dataset, split),
        source_type=source_type,
        source=source,
        schema=json.dumps(_schema(dataset).to_dict()),
        profile=json.dumps(profile),
    )


def _schema(dataset: SegmentationDataset):
    """What a batch of the split is (the dataset protocol): float32 images [N, C, H, W] and
    int64 masks [N, H, W]."""
    import numpy as np
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.types import Schema, TensorSpec

    info = dataset.info
    height, width = info.image_size
    return TensorDatasetSchema(
        features=Schema(
            [TensorSpec(np.dtype("float32"), (-1, info.in_channels, height, width), "image")]
        ),
        targets=Schema([TensorSpec(np.dtype("int64"), (-1, height, width), "mask")]),
    )


def _params(dataset: SegmentationDataset, config: ExperimentConfig) -> dict[str, Any]:
    """The dataset's validated params (defaults filled in, so leaving a key out and giving
    its default are one dataset), or the config's as written for a dataset without a model."""
    params = getattr(dataset, "params", None)
    if hasattr(params, "model_dump"):
        return params.model_dump(mode="json")
    return dict(config.data.params)


def _root(dataset: SegmentationDataset, config: ExperimentConfig) -> Path | None:
    """The directory a real dataset reads (``data.params.root``), or None: absolute, links
    resolved, so that two spellings of one directory are one source."""
    root = _params(dataset, config).get("root")
    if not isinstance(root, (str, os.PathLike)):
        return None
    return Path(root).expanduser().resolve()


def _sample_ids(config: ExperimentConfig, dataset: SegmentationDataset, split: str) -> list:
    """What the split holds: its samples' names where it has them (a real dataset's file
    stems or indices), sorted so that the order they are read in does not matter; else the
    split's global index range, which is how generated datasets number their samples."""
    names = getattr(dataset.split(split), "names", None)
    if names is not None:
        return sorted(map(str, names))
    data = config.data
    sizes = SplitSizes(train=data.train_size, val=data.val_size, test=data.test_size)
    return list(sizes.offsets()[split])
