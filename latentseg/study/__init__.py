"""Optuna studies: spec -> search space, storage, workers, pruning, resume."""

from latentseg.study.runner import StudyResult, run_study
from latentseg.study.spec import StudySpec, load_study_spec

__all__ = ["StudyResult", "StudySpec", "load_study_spec", "run_study"]
