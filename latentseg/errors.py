"""The exceptions latentseg raises for bad input. The CLI maps every one of them to exit code 2,
except a store that cannot be written (disk full, read-only): exit code 3."""

from __future__ import annotations


class LatentSegError(Exception):
    """Base class: a problem with what the user gave us (config, dataset, path, run id)."""

    exit_code = 2


class ConfigError(LatentSegError):
    """An experiment or study config is malformed, has unknown keys or impossible values."""


class RegistryError(LatentSegError):
    """An unknown or duplicate model / dataset name, or a broken plugin."""


class DatasetError(LatentSegError):
    """A dataset cannot be opened or its contents are invalid."""


class TrackingError(LatentSegError):
    """MLflow cannot be reached, or a run / checkpoint the user named does not exist."""


class CheckpointError(LatentSegError):
    """A checkpoint file is missing, truncated or was not written by latentseg."""


class StoreWriteError(TrackingError):
    """The tracking store's artifacts cannot be written (disk full, quota, read-only): the
    input was fine, the machine is not. Exit code 3."""

    exit_code = 3
