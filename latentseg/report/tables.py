"""What a report computed, and its tables as every writer reads them (Markdown, HTML, CSV,
terminal): which rows each table holds and in which order. Numbers stay numbers here; how a
value reads is :mod:`latentseg.report.cells`'s job, so a number can differ between two
writers only if one of them is wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from latentseg.report.labels import change, effect_label, on_dataset
from latentseg.report.stats import TEST_KEY, Family, is_stratum

SEED_VALUES_UP_TO = 5  # with this many seeds or fewer, each seed's value is shown
VERDICT_WORDS = ("better", "worse", "equivalent", "inconclusive")  # counted in the lead


@dataclass
class Report:
    """What :func:`latentseg.report.render.build` computed: the variants' table with their
    verdicts, the main effects, the interactions, the figures and the prose around them."""

    name: str
    metric: str  # the column compared, e.g. test_miou
    axes: list[str]
    baseline: dict[str, Any]
    baseline_reason: str
    summary: pd.DataFrame  # per variant: statistics, the comparison with the baseline, verdict
    markdown: str
    figures: dict[str, Any]  # name -> matplotlib Figure
    notes: list[str]  # merged and left-out runs, the negative control, findings
    images: dict[str, bytes] = field(default_factory=dict)  # name -> PNG bytes from MLflow
    effects: pd.DataFrame = field(default_factory=pd.DataFrame)  # main effects, with verdicts
    interactions: pd.DataFrame = field(default_factory=pd.DataFrame)
    # per compared variant: the noise of its paired differences by source (report.variance)
    variance: pd.DataFrame = field(default_factory=pd.DataFrame)
    family: Family | None = None
    findings: list[str] = field(default_factory=list)  # main effects and Pareto fronts
    tracking_uri: str | None = None
    parent_run_id: str | None = None  # a study's latest parent run, where the files are logged
    paths: list[Path] = field(default_factory=list)  # the documents, once written
    # adaptive seeds: per look, {round, seeds, alpha, open, decided}
    rounds: list[dict] = field(default_factory=list)
    # the Pareto front: one row per point with its objectives and membership verdict
    # (report.front), the objectives weighed and the family ({intervals, level, fixed})
    front: pd.DataFrame = field(default_factory=pd.DataFrame)
    front_objectives: list = field(default_factory=list)
    front_family: dict = field(default_factory=dict)
    # what a reader must not miss (also in the terminal): a rule that differs from the
    # study's, a secondary metric, runs computed differently, failures that may be the effect
    warnings: list[str] = field(default_factory=list)


SUMMARY_LEAD = [
    "verdict", "direction", "relevant", "diff", "diff_ci_low", "diff_ci_high", "p_adjusted",
    "n_pairs", "mde", "seeds_needed", "seeds_equivalence", "decided_round", "ci_level",
]  # fmt: skip


@dataclass(frozen=True)
class Tables:
    """A report's tables, rows in the order they are shown."""

    verdicts: pd.DataFrame  # every variant by dataset: the baseline, then decided verdicts first
    rounds: list[dict]  # adaptive seeds: one row per look; empty for a fixed design
    effects: pd.DataFrame  # main effects, decided verdicts first
    interactions: pd.DataFrame  # two-way interactions
    noise: pd.DataFrame  # where each comparison's noise comes from, the test set's share first
    details: pd.DataFrame  # every variant, the largest difference (or mean) first
    seed_values: bool  # whether the details show each seed's value
    # the terminal's rows: each compared variant and main effect by name, decided first
    compared: list[tuple[str, pd.Series]]
    verdict_counts: dict[str, int]  # variants and main effects, per verdict
    front: pd.DataFrame  # per dataset: on the front, inconclusive, dominated; best first
    summary_csv: pd.DataFrame  # the variants, the verdict's columns first after the axes
    effects_csv: pd.DataFrame  # the main effects without their test objects


def tables(report: Report) -> Tables:
    """The tables of ``report``, ordered for reading; nothing is formatted."""
    return Tables(
        verdicts=_verdict_rows(report),
        rounds=list(report.rounds),
        effects=_effect_rows(report.effects),
        interactions=report.interactions,
        noise=_noise_rows(report.variance),
        details=_detail_rows(report.summary),
        seed_values=_shows_seed_values(report.summary),
        compared=_compared(report),
        verdict_counts=_verdict_counts(report),
        front=_front_rows(report),
        summary_csv=_summary_csv(report),
        effects_csv=report.effects.drop(columns=TEST_KEY, errors="ignore"),
    )


def _verdict_rows(report: Report) -> pd.DataFrame:
    """Each variant against the baseline, by dataset, decided verdicts first."""
    table = report.summary
    if "diff" not in table:
        return table
    tasks = [k for k in report.axes if is_stratum(k)]
    return table.assign(
        _base=table["verdict"] != "baseline", _open=table["verdict"] == "inconclusive"
    ).sort_values(
        [*tasks, "_base", "_open", "diff"], ascending=[*([True] * len(tasks)), True, True, False]
    )


def _effect_rows(effects: pd.DataFrame) -> pd.DataFrame:
    """The main effects, decided verdicts first (otherwise in their computed order)."""
    if effects.empty:
        return effects
    return effects.sort_values("verdict", key=lambda v: v == "inconclusive", kind="stable")


def _noise_rows(variance: pd.DataFrame) -> pd.DataFrame:
    """The comparisons' noise, the largest share of the test set first."""
    if variance.empty:
        return variance
    return variance.sort_values("test_share", ascending=False, kind="stable")


def _detail_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Every variant, best first: by paired difference when compared, else by mean."""
    order = "diff" if "diff" in summary else "mean"  # paired: the verdicts' order
    return summary.sort_values(order, ascending=False, kind="stable")


def _shows_seed_values(summary: pd.DataFrame) -> bool:
    return "seed_values" in summary and summary["n"].max() <= SEED_VALUES_UP_TO


def _compared(report: Report) -> list[tuple[str, pd.Series]]:
    """Each compared variant and main effect with its name, decided verdicts first."""
    if report.family is None:
        return []
    keys = report.axes
    rows = [
        (change(row, keys, report.baseline) + on_dataset(row, keys), row)
        for _, row in report.summary[report.summary["verdict"] != "baseline"].iterrows()
    ]
    for _, row in report.effects.iterrows():
        scope = "" if row["scope"] == "all" else f" on {row['scope']}"
        rows.append((f"main effect: {effect_label(row)}{scope}", row))
    rows.sort(key=lambda item: item[1]["verdict"] == "inconclusive")  # decided verdicts lead
    return rows


def _verdict_counts(report: Report) -> dict[str, int]:
    counts = pd.concat(
        [report.summary["verdict"], report.effects.get("verdict", pd.Series(dtype=str))]
    ).value_counts()
    return {verdict: int(counts.get(verdict, 0)) for verdict in VERDICT_WORDS}


def _front_rows(report: Report) -> pd.DataFrame:
    """The front's points by dataset: on the front, then inconclusive, then dominated; within
    each, by the first objective, best first."""
    front = report.front
    if front.empty:
        return front
    from latentseg.report.pareto import MEMBERSHIP

    tasks = [k for k in report.axes if is_stratum(k)]
    first = report.front_objectives[0]
    rank = front["membership"].map({v: i for i, v in enumerate(MEMBERSHIP)})
    return (
        front.assign(_rank=rank, _value=front[first.metric])
        .sort_values([*tasks, "_rank", "_value"], ascending=[*([True] * len(tasks)), True, first.direction == "minimize"])
        .drop(columns=["_rank", "_value"])
    )  # fmt: skip


def _summary_csv(report: Report) -> pd.DataFrame:
    """The variants' table with the verdict columns first after the axes."""
    table = report.summary
    lead = [*report.axes, *(c for c in SUMMARY_LEAD if c in table)]
    return table[lead + [c for c in table.columns if c not in lead and not c.startswith("_")]]
