"""Everything that talks to MLflow, behind the training loop's callback interface.

The names below load on first use: a process that only reads or writes the store (the report)
never imports torch and the training loop through this package."""

from __future__ import annotations

from latentseg.lazy import lazy_getattr

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


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
