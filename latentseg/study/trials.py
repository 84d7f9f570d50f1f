"""A study's trials as a launch queues and counts them: the trials the spec still needs,
and each trial's latest attempt (a retried trial counts once)."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from latentseg.study import rounds
from latentseg.study.spec import LoadedStudy

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def queue_trials(study: optuna.Study, loaded: LoadedStudy) -> int:
    """Queue what the study still needs; returns how many trials were added.

    Grid: every point that has no trial yet, in any state (a failed point was retried when
    it failed, up to ``max_retry``). Other samplers: empty slots up to ``n_trials``, which
    the sampler fills when a worker starts them (retries are not counted as slots)."""
    trials = study.get_trials(deepcopy=False)
    if loaded.spec.sampler.name == "grid":
        taken = {rounds.point_key(t.system_attrs.get("fixed_params") or t.params) for t in trials}
        missing = [p for p in loaded.spec.grid_points() if rounds.point_key(p) not in taken]
        if loaded.spec.n_trials is not None:
            missing = missing[: max(0, loaded.spec.n_trials - len(taken))]
        for point in missing:
            study.enqueue_trial(point)
        return len(missing)
    slots = [t for t in trials if "failed_trial" not in t.system_attrs]
    needed = max(0, loaded.spec.total_trials() - len(slots))
    for _ in range(needed):
        study.enqueue_trial({})
    return needed


def latest_attempts(trials) -> list:
    """Each trial's latest attempt: a trial failed and queued again (a retry, or one stopped
    by a signal) counts once, as the attempt that replaced it, never as finished."""
    latest: dict[int, Any] = {}
    for trial in trials:
        first = trial.system_attrs.get("failed_trial", trial.number)
        if first not in latest or trial.number > latest[first].number:
            latest[first] = trial
    return list(latest.values())
