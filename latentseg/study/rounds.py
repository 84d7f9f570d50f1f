"""Adaptive seeds: rounds of trials that add seeds only where a comparison is still open.

A study with ``seeds: {min, max, step}`` runs every grid point with the first ``min`` seeds
(round 1). When a round's trials have all finished, a *judge* takes the verdicts at that
round's look and names the points that still need seeds: each open comparison's point and
its baseline (or, with ``until: effects``, every point while a main effect is open). Their
next seeds are queued as new trials of the next round, each carrying its round, its seeds and
the open comparison in its system attributes, so a retried trial keeps them and a relaunch
finds the round where it was. Queueing happens under the study's queue lock and only once per
round (a round whose trials exist is never queued again), so launches on several machines
advance the study together, exactly once.

A point that was pruned, or whose trial failed for good, gets no more seeds. Trials after
the first round are never pruned: an added seed cut short would leave its pair incomplete.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from latentseg.study.judgement import Judgement

ROUND_ATTR = "latentseg_round"
SEEDS_ATTR = "latentseg_seeds"
OPEN_ATTR = "latentseg_open"  # why the trial's seeds run: the comparison that was open
FIRST_ROUND = "first round: every point"


def trial_round(trial: FrozenTrial) -> int:
    return int(trial.system_attrs.get(ROUND_ATTR, 1))


def trial_seeds(attrs: dict[str, Any], first: list[int]) -> list[int]:
    """The seeds a trial with system attributes ``attrs`` runs: its round's (``first``, the
    first round's, when it has none)."""
    seeds = attrs.get(SEEDS_ATTR)
    return [int(s) for s in seeds] if seeds else list(first)


def point_of(trial: FrozenTrial) -> dict[str, Any]:
    return dict(trial.system_attrs.get("fixed_params") or trial.params)


def point_key(point: dict[str, Any]) -> tuple:
    """A grid point as a hashable key (values by repr: 1 and True differ)."""
    return tuple(sorted((k, repr(v)) for k, v in point.items()))


def current_round(trials: list[FrozenTrial]) -> int:
    return max((trial_round(t) for t in trials), default=1)


def seeds_spent(trials: list[FrozenTrial], first: list[int]) -> int:
    """Seed runs that completed trials trained."""
    return sum(
        len(trial_seeds(t.system_attrs, first)) for t in trials if t.state == TrialState.COMPLETE
    )


def budget(loaded) -> int:
    """Seed runs at most: every grid point at ``max`` seeds."""
    return len(loaded.spec.grid_points()) * loaded.spec.adaptive.max


def still_eligible(trials: list[FrozenTrial]) -> set[tuple]:
    """Points whose latest round completed (a pruned point, or one whose trial failed for
    good, gets no more seeds)."""
    latest: dict[tuple, int] = {}
    for trial in trials:
        key = point_key(point_of(trial))
        latest[key] = max(latest.get(key, 0), trial_round(trial))
    return {
        point_key(point_of(t))
        for t in trials
        if t.state == TrialState.COMPLETE and trial_round(t) == latest[point_key(point_of(t))]
    }


def plan(loaded, trials: list[FrozenTrial], judgement: Judgement, round_: int) -> list[dict]:
    """The next round's trials: ``{point, seeds, reason}`` for each point that needs seeds."""
    looks = loaded.spec.adaptive.looks()
    if round_ >= len(looks):
        return []
    first_seed = loaded.base.train.seed
    seeds = [first_seed + i for i in range(looks[round_ - 1], looks[round_])]
    by_number = {t.number: t for t in trials}
    eligible = still_eligible(trials)
    chosen: dict[tuple, dict] = {}
    for need in judgement.needs:
        candidates = sorted(n for n in need.trials if n in by_number)
        if not candidates:
            continue
        # a variant run by several points (replicates of one model): seed the first
        point = point_of(by_number[candidates[0]])
        key = point_key(point)
        if key not in eligible:
            continue
        if key in chosen:
            chosen[key]["reason"] += "; " + need.reason
        else:
            chosen[key] = {"point": point, "seeds": seeds, "reason": need.reason}
    return list(chosen.values())


def queue_round(study: optuna.Study, planned: list[dict], round_: int) -> int:
    for item in planned:
        study.add_trial(
            optuna.create_trial(
                state=TrialState.WAITING,
                system_attrs={
                    "fixed_params": item["point"],
                    ROUND_ATTR: round_,
                    SEEDS_ATTR: item["seeds"],
                    OPEN_ATTR: item["reason"][:4000],
                },
            )
        )
    return len(planned)


def round_finished(trials: list[FrozenTrial]) -> bool:
    return not any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
