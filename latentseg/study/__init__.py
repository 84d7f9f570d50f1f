"""Optuna studies: spec -> search space, storage, workers, pruning, resume.

The names below load on first use: a Ray worker's task (:mod:`latentseg.study.ray_task`)
imports this package without torch."""

from latentseg.lazy import lazy_getattr

_EXPORTS = {
    "StudyResult": "latentseg.study.runner",
    "run_study": "latentseg.study.runner",
    "StudySpec": "latentseg.study.spec",
    "load_study_spec": "latentseg.study.spec",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
