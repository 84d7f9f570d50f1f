"""latentseg: ablations of latent-attention segmentation models, tracked in MLflow.

Public API::

    from latentseg import create_model, list_models, create_dataset, list_datasets
    from latentseg import load_experiment, train, load_model, ablation_report
    latentseg.tune_process()   # opt-in: the host settings the CLI uses for speed

Importing latentseg changes nothing in the host process (environment, allocator, matplotlib
backend, Optuna's log level); the command line opts in with :func:`tune_process`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from latentseg._version import __version__
from latentseg.config import ExperimentConfig, ModelConfig
from latentseg.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    LatentSegError,
    RegistryError,
    TrackingError,
)
from latentseg.lazy import lazy_getattr
from latentseg.loading import load_experiment

if TYPE_CHECKING:
    from latentseg.models import LatentSegModel

# The model and dataset API load on first use (PEP 562): ``import latentseg.report.stats`` or
# ``latentseg.config`` does not pay for torch.
_LAZY = {
    "create_dataset": "latentseg.data",
    "list_datasets": "latentseg.data",
    "register_dataset": "latentseg.data",
    "LatentSegModel": "latentseg.models",
    "create_model": "latentseg.models",
    "list_models": "latentseg.models",
    "register_model": "latentseg.models",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def train(config, **kwargs):
    """Train an experiment (a path, or an ExperimentConfig); see :func:`latentseg.tracking.run_experiment`."""
    from latentseg.tracking import run_experiment

    return run_experiment(config, **kwargs)


def ablation_report(study: str | None = None, experiment: str | None = None, **kwargs):
    """Verdicts for a study's or experiment's variants; see
    :func:`latentseg.report.ablation_report`."""
    from latentseg.report import ablation_report as _report

    return _report(study=study, experiment=experiment, **kwargs)


def load_model(
    path_or_run_id: str, tracking_uri: str | None = None, map_location: str = "cpu"
) -> LatentSegModel:
    """Rebuild a model from a checkpoint file, or from a run id's best checkpoint in MLflow."""
    from latentseg.tracking import load_model as _load

    return _load(path_or_run_id, tracking_uri=tracking_uri, map_location=map_location)


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "ExperimentConfig",
    "LatentSegError",
    "LatentSegModel",
    "ModelConfig",
    "RegistryError",
    "TrackingError",
    "__version__",
    "ablation_report",
    "create_dataset",
    "create_model",
    "list_datasets",
    "list_models",
    "load_experiment",
    "load_model",
    "register_dataset",
    "register_model",
    "train",
]


def tune_process() -> dict[str, bool]:
    """Tune this process for training speed, as the ``latentseg`` command does (never done on
    import: a notebook that imports latentseg keeps its own settings). Returns what is in
    effect:

    - ``huge_pages``: transparent huge pages for PyTorch's large CPU tensors
      (``THP_MEM_ALLOC_ENABLE=1``; a fresh 64 MB activation otherwise costs ~30 ms of page
      faults each step). PyTorch reads it at its first large allocation: call this before
      training. An explicit ``THP_MEM_ALLOC_ENABLE=0`` is respected.
    - ``keep_freed_memory``: glibc's malloc keeps freed blocks for reuse
      (``latentseg.train.fastpath.keep_freed_memory``; ``LATENTSEG_MALLOC_TUNING=0`` opts out).
    """
    import os

    from latentseg.train.fastpath import keep_freed_memory

    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return {
        "huge_pages": os.environ["THP_MEM_ALLOC_ENABLE"] == "1",
        "keep_freed_memory": keep_freed_memory(),
    }
