"""Everything that talks to MLflow, behind the training loop's callback interface.

The names below load on first use: a process that only reads or writes the store (a study's
parent, the report) never imports torch and the training loop through this package."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RunResult": "latentseg.tracking.run",
    "load_model": "latentseg.tracking.run",
    "run_experiment": "latentseg.tracking.run",
    "DEFAULT_TRACKING_URI": "latentseg.tracking.store",
    "TrackingStore": "latentseg.tracking.store",
    "connect": "latentseg.tracking.store",
    "get_or_create_experiment": "latentseg.tracking.store",
    "resolve_tracking_uri": "latentseg.tracking.store",
    "MLflowTracker": "latentseg.tracking.tracker",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
