"""Dataset registry: ``create_dataset('shapes', image_size=64)``, ``list_datasets()``.

A dataset builder is any callable ``(*, split_sizes, seed, **params) -> SegmentationDataset``.
Third-party packages add builders through the ``latentseg.datasets`` entry-point group; a
config can also name one directly as ``module:callable`` (``data.dataset: my_pkg.data:build``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from latentseg.data.base import (
    SPLITS,
    DatasetInfo,
    SegmentationDataset,
    Split,
    SplitSizes,
    TensorDataset,
    TensorSplit,
)
from latentseg.data.digits import Digits
from latentseg.data.folder import Folder
from latentseg.data.synthetic import Noise, Shapes
from latentseg.data.torchvision_sets import OxfordPet, Voc
from latentseg.errors import ConfigError, LatentSegError
from latentseg.registry import Registry

DATASETS: Registry = Registry("dataset", entry_point_group="latentseg.datasets")
register_dataset = DATASETS.register

register_dataset(Shapes, name="shapes")
register_dataset(Noise, name="noise")
register_dataset(Digits, name="digits")
register_dataset(Folder, name="folder")
register_dataset(Voc, name="voc")
register_dataset(OxfordPet, name="oxford-pet")


def resolve_builder(name: str) -> Callable[..., SegmentationDataset]:
    """The builder for a registered name or a ``module:callable`` reference."""
    if ":" not in name:
        return DATASETS.get(name)
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"data.dataset '{name}': expected 'module:callable'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's input
        raise ConfigError(
            f"data.dataset '{name}': cannot import module '{module_name}': {type(exc).__name__}: {exc}"
        ) from None
    builder = module
    for part in attr.split("."):
        builder = getattr(builder, part, None)
        if builder is None:
            raise ConfigError(f"data.dataset '{name}': module '{module_name}' has no '{attr}'")
    if not callable(builder):
        raise ConfigError(f"data.dataset '{name}': '{attr}' is not callable")
    return builder


def create_dataset(
    name: str, split_sizes: SplitSizes | dict | None = None, seed: int = 0, **params: Any
) -> SegmentationDataset:
    """Build dataset ``name`` (registered, or ``module:callable``) with its own ``params``;
    ``split_sizes`` as ``{'train': n, ...}`` (missing or ``None``: the dataset's default)."""
    sizes = (
        split_sizes if isinstance(split_sizes, SplitSizes) else SplitSizes(**(split_sizes or {}))
    )
    builder = resolve_builder(name)
    try:
        dataset = builder(split_sizes=sizes, seed=seed, **params)
    except LatentSegError:
        raise
    except TypeError as exc:
        # A plugin without a params model: an unexpected keyword is a config error.
        try:
            inspect.signature(builder).bind(split_sizes=sizes, seed=seed, **params)
        except TypeError:
            raise ConfigError(
                f"dataset '{name}' does not accept data.params {params}: {exc}"
            ) from None
        raise
    if not isinstance(dataset, SegmentationDataset):
        raise ConfigError(
            f"dataset '{name}' returned {type(dataset).__name__}, expected a SegmentationDataset"
        )
    return dataset


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetInfo",
    "SegmentationDataset",
    "Split",
    "SplitSizes",
    "TensorDataset",
    "TensorSplit",
    "create_dataset",
    "list_datasets",
    "register_dataset",
    "resolve_builder",
]
