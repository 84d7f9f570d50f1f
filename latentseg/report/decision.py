"""How a report decides: the smallest effect of interest, alpha, the correction and the
planned looks (``latentseg report --sesoi/--alpha/--correction``, or a study spec's
``report:`` section), and the metric it compares."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from latentseg.errors import ConfigError
from latentseg.report.stats import metric_bounds
from latentseg.report.verdicts import ALPHA, DEFAULT_SESOI, METHODS


@dataclass(frozen=True)
class Decision:
    """How a report decides (``latentseg report --sesoi/--alpha/--correction``, or a
    study spec's ``report:`` section)."""

    sesoi: float | None = None  # None: 0.01 for a metric in [0, 1], else no equivalence
    alpha: float = ALPHA
    correction: str = "holm"
    # Adaptive seeds: seeds per point at each planned look (a study's ``study.seeds.looks``);
    # empty for a fixed design, decided once at ``alpha``.
    looks: tuple[int, ...] = ()
    until: str = "variants"  # adaptive seeds: what later rounds seed (``study.seeds.until``)
    primary: str = "miou"  # the study's primary metric (``report: {metric: ...}``)
    # the front's objectives: ``--front``, else a study's ``objectives:`` (their metrics)
    objectives: tuple[str, ...] = ()
    front_asked: bool = False  # the objectives came from --front (an error there exits 2)
    # the options given that differ from the rule the study logged: "--sesoi 0.02 (the study: 0.01)"
    differs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.correction not in METHODS:
            raise ConfigError(
                f"--correction {self.correction}: must be one of {', '.join(METHODS)}"
            )
        if not 0 < self.alpha < 1:
            raise ConfigError(f"--alpha {self.alpha}: must be between 0 and 1")
        if self.sesoi is not None and not self.sesoi > 0:
            raise ConfigError(f"--sesoi {self.sesoi}: must be > 0")
        if self.correction == "bh" and len(self.looks) > 1:
            raise ConfigError(
                "--correction bh: this study decides after each round of seeds, which needs "
                "family-wise control (holm or bonferroni): bh's intervals are not repeated "
                "confidence intervals"
            )

    def resolved_sesoi(self, metric: str) -> float:
        if self.sesoi is not None:
            return float(self.sesoi)
        return DEFAULT_SESOI if metric_bounds(metric) == (0.0, 1.0) else math.nan


def study_objectives(spec_params: dict[str, str]) -> tuple[str, ...]:
    """A study's ``objectives:`` as ``METRIC`` or ``METRIC:DIRECTION`` (its parent run logs
    the list as JSON)."""
    text = spec_params.get("study.objectives")
    if not text or text == "None":
        return ()
    try:
        return tuple(
            str(item["metric"]) + (f":{item['direction']}" if item.get("direction") else "")
            for item in json.loads(text)
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return ()


def decision_for(given: dict[str, Any], spec_params: dict[str, str]) -> Decision:
    """The decision rule: values ``given`` (None: not given) first, then a study spec's
    ``report:`` section (logged on its parent run as ``study.report.*``), then the defaults.
    A value given that differs from the study's is recorded (``differs``): the report names
    it."""

    def logged(key: str):
        value = spec_params.get(f"study.report.{key}")
        return None if value in (None, "None") else value

    def pick(key: str):
        return given[key] if given.get(key) is not None else logged(key)

    differs = []
    defaults = {"sesoi": None, "alpha": ALPHA, "correction": "holm"}
    for key in ("sesoi", "alpha", "correction"):
        if given.get(key) is None or not spec_params:
            continue
        study = logged(key)
        study_value = study if study is not None else defaults[key]
        same = (
            str(given[key]) == str(study_value)
            if key == "correction" or study_value is None
            else math.isclose(float(given[key]), float(study_value))
        )
        if not same:
            shown = "the default" if study_value is None else study_value
            differs.append(f"--{key} {given[key]} (the study's rule: {shown})")
    sesoi, alpha = pick("sesoi"), pick("alpha")
    looks = spec_params.get("study.seeds.looks")
    return Decision(
        sesoi=None if sesoi is None else float(sesoi),
        alpha=ALPHA if alpha is None else float(alpha),
        correction=pick("correction") or "holm",
        looks=tuple(int(n) for n in looks.split(",")) if looks else (),
        until=spec_params.get("study.seeds.until") or "variants",
        primary=logged("metric") or "miou",
        objectives=tuple(given.get("front") or ()) or study_objectives(spec_params),
        front_asked=bool(given.get("front")),
        differs=tuple(differs),
    )


def run_metric(metric: str) -> str:
    """The column a report compares: the test split at each run's best-validation
    checkpoint (validation picks the epoch, test scores it). ``miou``, ``val_miou`` and
    ``test_miou`` all name ``test_miou``; ``best_val_*`` is refused, since validation would
    then score its own choice."""
    if metric.startswith("best_val_"):
        raise ConfigError(
            f"--metric {metric}: validation picked that epoch, so it cannot also score it; "
            f"use {metric.removeprefix('best_val_')} (compared on the test split at the best-validation checkpoint)"
        )
    return "test_" + metric.removeprefix("val_").removeprefix("test_")
