"""The best model of a run as an MLflow Model: exported with torch.export, linked to the run
and registrable from the UI."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

from latentseg.train.callbacks import TrainContext


def log_mlflow_model(context: TrainContext, client, run_id: str) -> str:
    """The best model as an MLflow Model (``pt2`` via torch.export, dynamic batch size),
    linked to the run and registrable from the UI, in ``client``'s store. Returns its
    ``models:/`` URI."""
    import mlflow
    import mlflow.pytorch

    from latentseg._version import __version__

    model = context.model
    was_training = model.training
    model.eval()
    # Two images, so that torch.export keeps the batch dimension dynamic.
    example = context.plot_batch[0][:1].repeat(2, 1, 1, 1).float().numpy()
    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"latentseg=={__version__}",
    ]
    experiment_id = client.get_run(run_id).info.experiment_id
    # A contiguous (NCHW) copy on the CPU: the exported weights are laid out as any consumer
    # expects, whatever the fast path trained in.
    exported = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
    try:
        with _process_tracking_uri(client.tracking_uri):
            logged = mlflow.initialize_logged_model(
                name="model",
                source_run_id=run_id,
                experiment_id=experiment_id,
                tags={"latentseg.variant": context.prepared.variant},
            )
            info = mlflow.pytorch.log_model(
                exported,
                name="model",
                input_example=example,
                pip_requirements=requirements,
                run_id=run_id,
                model_id=logged.model_id,
            )
    finally:
        model.train(was_training)
    client.set_tag(run_id, "latentseg.model_uri", info.model_uri)
    return info.model_uri


@contextlib.contextmanager
def _process_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's model logging (``initialize_logged_model``, ``log_model``) takes no client:
    it writes wherever the process-wide tracking URI points. Point it at ``uri`` (the run's
    store, as its client was given) for the call, then put back what the process had."""
    import mlflow

    had = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(had)
