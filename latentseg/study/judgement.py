"""The adaptive judge's interface: what a study with adaptive seeds asks after each round,
and the answer it expects.

A study calls a :data:`Judge` it is handed (``run_study(..., judge=...)``; the command line
hands it the ablation report's, :func:`latentseg.report.adaptive.judge`), as Optuna calls the
pruner it is given: the study never imports the report, and the report imports only these
types from here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Need:
    """A variant that needs the next round's seeds: the trials whose runs it is made of (any
    of them gives its grid point) and why (the open comparison)."""

    trials: list[int]
    reason: str


@dataclass
class Judgement:
    """The verdicts at one round's look, as the study needs them."""

    needs: list[Need]
    open: int  # comparisons still inconclusive
    decided: int
    table: list[dict[str, Any]] = field(default_factory=list)  # one record per comparison


# judge(loaded study, tracking URI, round) -> the verdicts at that round's look
Judge = Callable[[Any, str, int], Judgement]
