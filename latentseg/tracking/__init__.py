"""Everything that talks to MLflow, behind the training loop's callback interface."""

from latentseg.tracking.run import RunResult, load_model, run_experiment
from latentseg.tracking.store import (
    DEFAULT_TRACKING_URI,
    TrackingStore,
    connect,
    get_or_create_experiment,
    resolve_tracking_uri,
)
from latentseg.tracking.tracker import MLflowTracker

__all__ = [
    "DEFAULT_TRACKING_URI",
    "MLflowTracker",
    "RunResult",
    "TrackingStore",
    "connect",
    "get_or_create_experiment",
    "load_model",
    "resolve_tracking_uri",
    "run_experiment",
]
