"""An ablation report: ``summary.csv``, ``report.md`` (with ``plots/*.png``) and a
self-contained ``report.html`` (images embedded, sortable tables, no external fetch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latentseg.config import ModelConfig
from latentseg.errors import ConfigError
from latentseg.io import atomic_write_bytes
from latentseg.report.collect import Collected
from latentseg.report.rounds import complete_blocks, effect_runs, run_rounds, sequential
from latentseg.report.stats import (
    NOT_APPLICABLE,
    TEST_KEY,
    Family,
    ablation_axes,
    apply_verdicts,
    axis_effects,
    compare,
    deduplicate,
    interactions,
    is_stratum,
    mark_inert,
    mean_ci,
    metric_bounds,
    summarize,
)
from latentseg.report.verdicts import ALPHA, DEFAULT_SESOI, METHODS
from latentseg.tracking.store import TrackingStore


@dataclass
class Report:
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
    family: Family | None = None
    findings: list[str] = field(default_factory=list)  # main effects and Pareto fronts
    tracking_uri: str | None = None
    parent_run_id: str | None = None  # a study's latest parent run, where the files are logged
    paths: list[Path] = field(default_factory=list)  # the documents, once written
    # adaptive seeds: per look, {round, seeds, alpha, open, decided}
    rounds: list[dict] = field(default_factory=list)
    # what a reader must not miss (also in the terminal): a rule that differs from the
    # study's, a secondary metric, runs computed differently, failures that may be the effect
    warnings: list[str] = field(default_factory=list)


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


def choose_baseline(
    table: pd.DataFrame, axes: list[str], given: dict[str, Any] | None
) -> tuple[dict[str, Any], str]:
    """The baseline variant (its value on each axis) and why it was chosen: the one
    ``given`` with --baseline, else the tutorial's configuration, else the variant closest
    to it."""
    keys = [a.removeprefix("params.") for a in axes]
    if given:
        return _given_baseline(table, keys, given)
    return _tutorial_baseline(table, keys) or _closest_to_tutorial(table, keys)


def _given_baseline(
    table: pd.DataFrame, keys: list[str], given: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """The one variant (on each dataset) that matches the axes ``given``."""
    unknown = sorted(set(given) - set(keys))
    if unknown:
        raise ConfigError(
            f"--baseline {unknown[0]}: not an ablation axis here; axes: {', '.join(keys) or '(none)'}"
        )
    tasks = [k for k in keys if is_stratum(k)]
    if set(given) & set(tasks):
        raise ConfigError(
            f"--baseline {sorted(set(given) & set(tasks))[0]}: a dataset is not a variant; "
            "each variant is compared with the baseline on the same dataset"
        )
    rows = table[[all(str(row[k]) == str(given[k]) for k in given) for _, row in table.iterrows()]]
    per_task = rows.groupby(tasks).size() if tasks else pd.Series([len(rows)])
    if rows.empty or (per_task != 1).any():
        variant_axes = [k for k in keys if k not in tasks]
        raise ConfigError(
            f"--baseline {given}: matches {len(rows)} variants; give a value for each axis: {', '.join(variant_axes)}"
        )
    return {k: rows.iloc[0][k] for k in keys}, "given with --baseline" + (
        " (on each dataset)" if tasks else ""
    )


def _tutorial_baseline(table: pd.DataFrame, keys: list[str]) -> tuple[dict[str, Any], str] | None:
    """The first variant with the tutorial's value (or n/a) on every model axis; ``None``
    when an axis is not the model's or no variant has them all."""
    tutorial = ModelConfig()
    variant_keys = [k for k in keys if not is_stratum(k)]
    if not variant_keys or not all(
        k.startswith("model.") and hasattr(tutorial, k.removeprefix("model.")) for k in variant_keys
    ):
        return None
    wanted = {k: getattr(tutorial, k.removeprefix("model.")) for k in variant_keys}
    for _, row in table.iterrows():
        if all(str(row[k]) in (str(wanted[k]), NOT_APPLICABLE) for k in variant_keys):
            return {k: row[k] for k in keys}, (
                "the tutorial's configuration"
                + (" on each dataset" if len(variant_keys) < len(keys) else "")
            )
    return None


def _closest_to_tutorial(table: pd.DataFrame, keys: list[str]) -> tuple[dict[str, Any], str]:
    """Not the best-scoring variant: choosing the reference on the scored data would bias
    every comparison against it. The one closest to the tutorial, by its axes alone."""
    tutorial = ModelConfig()
    variant_keys = [k for k in keys if not is_stratum(k)]

    def closeness(row) -> int:
        return sum(
            k.startswith("model.")
            and str(row[k]) == str(getattr(tutorial, k.removeprefix("model."), None))
            for k in variant_keys
        )

    scores = [closeness(row) for _, row in table.iterrows()]
    chosen = table.iloc[int(np.argmax(scores))]  # ties: the first in the sorted table
    return {k: chosen[k] for k in keys}, (
        f"the variant closest to the tutorial's configuration ({max(scores)} of "
        f"{len(variant_keys)} axes as in tutorial), chosen without looking at the metric; "
        "--baseline picks another"
    )


MAX_CURVES = 8  # learning curves of the best variants (and the baseline), readable in one plot
CURVE_SEEDS = 20  # runs per variant whose metric history is fetched for the curves


def build(
    collected: Collected,
    name: str,
    metric: str = "miou",
    baseline: dict[str, Any] | None = None,
    store=None,
    decision: Decision | None = None,
    figures: bool = True,
    client=None,
) -> Report:
    """The report's numbers, verdicts and (unless ``figures`` is false) figures. With the
    tracking ``store`` (a :class:`~latentseg.tracking.store.TrackingStore`; ``client``, an
    ``MlflowClient``, is taken for it) it also draws learning curves from the metric histories
    and shows the best run's attention maps and, for a study, the parameter importances."""
    scored = _scored_runs(collected, name, metric)
    runs, column = scored.runs, scored.column
    axes = ablation_axes(runs)
    table = _variant_table(runs, axes, column)
    chosen, reason = choose_baseline(table, axes, baseline)
    keys = [a.removeprefix("params.") for a in axes]
    report = Report(name, column, keys, chosen, reason, table, "", {}, [])
    decision = decision or Decision()
    if axes:
        _decide(report, runs, axes, decision)
        _count_failures(report, runs, axes, collected.unfinished)
    else:
        table["verdict"] = "baseline"
    report.warnings = _warnings(report, runs, axes, decision, metric)
    report.notes = _notes(collected, scored) + _effect_notes(report, decision)
    if figures:
        report.figures, report.images = _drawings(report, runs, axes, store or client, collected)
    report.findings = _findings(axes, keys, column, report.summary, report.effects)
    shown = [*report.figures, *report.images]
    report.markdown = _markdown(report, collected, report.findings, shown)
    return report


@dataclass
class _Scored:
    """The runs a report compares, and what preparing them left out."""

    runs: pd.DataFrame  # finished, reporting ``column``; inert params n/a; each seed once
    column: str  # the compared metric, e.g. test_miou
    inert_note: str | None  # the params that do not change the model, if any
    merged: int  # runs that repeat a configuration and seed
    missing: int  # finished runs without ``column``


def _scored_runs(collected: Collected, name: str, metric: str) -> _Scored:
    """The runs that report the compared metric, each configuration and seed once."""
    runs = collected.runs
    if runs.empty:
        raise ConfigError(
            f"'{name}' has no finished runs to report on. {collected.left_out_line()}"
        )
    column = run_metric(metric)
    if f"metrics.{column}" not in runs:
        raise ConfigError(f"--metric {metric}: the runs report no {column}")
    runs, inert_note = mark_inert(runs)
    runs, merged = deduplicate(runs)
    missing = int(runs[f"metrics.{column}"].isna().sum())
    runs = runs[runs[f"metrics.{column}"].notna()].reset_index(drop=True)
    if runs.empty:
        raise ConfigError(f"'{name}': no finished run reports {column}")
    return _Scored(runs, column, inert_note, merged, missing)


def _variant_table(runs: pd.DataFrame, axes: list[str], column: str) -> pd.DataFrame:
    """Each variant's statistics over its seeds (and, for a few seeds, each seed's value)."""
    table = summarize(runs, axes, column, metric_bounds(column))
    if axes and table["n"].max() <= SEED_VALUES_UP_TO:  # a few seeds: show each value
        values = runs.groupby(axes, dropna=False, sort=True)[f"metrics.{column}"].agg(
            lambda v: ", ".join(f"{x:.3f}" for x in v)
        )
        table["seed_values"] = values.to_numpy()
    return table


def _decide(report: Report, runs: pd.DataFrame, axes: list[str], decision: Decision) -> None:
    """The verdicts of every comparison with the baseline and every main effect, one family
    (at each planned look, with adaptive seeds), into ``report``; and the interactions."""
    keys, column, chosen = report.axes, report.metric, report.baseline
    bounds = metric_bounds(column)

    def tables_at(subset, effect_runs):
        comparisons = compare(subset, axes, column, chosen, bounds)
        effects = _effects(effect_runs, axes, column, chosen, bounds)
        return [comparisons, _mirror_comparisons(effects, comparisons, keys)]

    def decide(tables, alpha, planning_alpha):
        return apply_verdicts(
            tables,
            sesoi=decision.resolved_sesoi(column),
            alpha=alpha,
            method=decision.correction,
            bounds=bounds,
            planning_alpha=planning_alpha,
        )

    if decision.looks:  # adaptive seeds: a look per round, alpha spent over the looks
        (comparisons, effects), family, rounds = sequential(
            runs, axes, decision.looks, decision.alpha, tables_at, decide,
            (keys, ["axis", "value", "scope"]), decision.until,
        )  # fmt: skip
        report.interactions = interactions(
            complete_blocks(effect_runs(runs, run_rounds(runs), decision.until), axes),
            axes,
            column,
        )
    else:
        (comparisons, effects), family = decide(tables_at(runs, runs), decision.alpha, None)
        rounds = []
        report.interactions = interactions(runs, axes, column)
    table = report.summary.merge(comparisons, on=keys, how="left")
    report.summary = _paired_means(
        _cost_ratios(table, axes, keys), runs, axes, keys, chosen, column
    )
    report.effects, report.family, report.rounds = effects, family, rounds


PAIRED_COLUMNS = [
    "n_pairs", "diff", "se", "df", "sd_diff", "diff_ci95_low", "diff_ci95_high", "p",
    "hedges_g", "wilcoxon_p", TEST_KEY,
]  # fmt: skip


def _mirror_comparisons(effects: pd.DataFrame, comparisons: pd.DataFrame, keys: list[str]):
    """With one variant axis, a main effect on one dataset (or with no dataset axis) is by
    definition the comparison of that value with the baseline there: it takes that
    comparison's numbers and test, so the family holds the test once (also when an adaptive
    study's main effects keep the first round's seeds while the comparison grows)."""
    variant_keys = [k for k in keys if not is_stratum(k)]
    tasks = [k for k in keys if is_stratum(k)]
    if effects.empty or len(variant_keys) != 1 or "diff" not in comparisons:
        return effects
    (axis,) = variant_keys
    effects = effects.copy()
    for i, row in effects.iterrows():
        if row["axis"] != axis or (tasks and row["scope"] == "all"):
            continue
        match = comparisons[comparisons[axis].map(str) == str(row["value"])]
        if tasks:
            match = match[match[tasks[0]].map(str) == str(row["scope"])]
        if len(match) == 1:
            for name in PAIRED_COLUMNS:
                if name in match:
                    effects.loc[i, name] = match.iloc[0][name]
    return effects


def _paired_means(
    table: pd.DataFrame, runs: pd.DataFrame, axes: list[str], keys: list[str], baseline, metric
) -> pd.DataFrame:
    """Each variant's mean and the baseline's over the same seed pairs (``mean_paired``,
    ``baseline_mean_paired``): with adaptive seeds the baseline runs more seeds than most
    variants, and means over different seeds can order variants against their verdicts."""
    from latentseg.report.stats import baseline_mask, pairing

    column = f"metrics.{metric}"
    runs = runs.assign(
        _pair=pairing(runs, axes), _variant=runs[axes].map(str).agg("|".join, axis=1)
    )
    base = runs[baseline_mask(runs, axes, baseline)].groupby("_pair")[column].mean()
    mine, theirs = [], []
    for _, row in table.iterrows():
        name = "|".join(str(row[k]) for k in keys)
        values = runs[runs["_variant"] == name].groupby("_pair")[column].mean()
        shared = values.index.intersection(base.index)
        mine.append(float(values[shared].mean()) if len(shared) else math.nan)
        theirs.append(float(base[shared].mean()) if len(shared) else math.nan)
    return table.assign(mean_paired=mine, baseline_mean_paired=theirs)


NUMERICS = {
    "tags.latentseg.git_commit": "code (git commit)",
    "tags.latentseg.cpu_capability": "CPU capability",
    "tags.latentseg.native_kernel": "native kernel",
    "tags.latentseg.weight_gradient": "weight-gradient path",
}


def _warnings(
    report: Report, runs: pd.DataFrame, axes: list[str], decision: Decision, metric: str
) -> list[str]:
    """What a reader must not miss: a rule that differs from the study's, a secondary
    metric, comparisons that pair runs computed differently, failures that may be the
    effect."""
    out = []
    if decision.differs:
        out.append(
            "The decision rule differs from the one the study logged: "
            + "; ".join(decision.differs)
            + "."
        )
    primary = run_metric(decision.primary)
    if run_metric(metric) != primary:
        out.append(
            f"Secondary metric: {report.metric}. The study's primary metric is {primary} "
            "(report: {metric: ...} in its spec); these verdicts control errors within this "
            "report only, not together with the primary's: read them as supporting evidence."
        )
    out += _numerics_warnings(report, runs, axes)
    summary = report.summary
    failing = (
        summary[summary["failures_matter"].astype(bool)]
        if "failures_matter" in summary
        else summary.iloc[:0]
    )
    for _, row in failing.iterrows():
        out.append(
            f"* {change(row, report.axes, report.baseline)}{_on(row, report.axes)}: "
            f"{_failure_words(row)} on seeds the baseline finished; those seeds are missing "
            "from its comparison, and failures can be the effect (its verdict is over the "
            "seeds that finished)."
        )
    return out


def _numerics_warnings(report: Report, runs: pd.DataFrame, axes: list[str]) -> list[str]:
    """One warning per kind of numerics (code, CPU capability, kernel, gradient path) that
    differs between runs that a comparison pairs."""
    from latentseg.report.stats import baseline_mask, pairing

    if not axes:
        return []
    pairs = pairing(runs, axes)
    variant = runs[axes].map(str).agg("|".join, axis=1)
    is_base = np.asarray(baseline_mask(runs, axes, report.baseline), bool)
    out = []
    for column, what in NUMERICS.items():
        if column not in runs or runs[column].dropna().nunique() < 2:
            continue
        values = runs[column].fillna("(untagged)").astype(str)
        base_value = dict(zip(pairs[is_base], values[is_base], strict=True))
        mixed = set()
        for i in np.flatnonzero(~is_base):
            other = base_value.get(pairs.iloc[i])
            if other is not None and other != values.iloc[i]:
                mixed.add(variant.iloc[i])
        if not mixed:
            continue
        counts = ", ".join(f"{v[:12]} on {n} runs" for v, n in values.value_counts().items())
        out.append(
            f"Runs were computed with different {what} ({counts}): {len(mixed)} of "
            f"{int((~report.summary['is_baseline'].astype(bool)).sum())} comparisons pair runs "
            "computed differently, so their differences include that change. Run the study "
            "on one kind of machine and code, or compare within one."
        )
    return out


def _count_failures(
    report: Report, runs: pd.DataFrame, axes: list[str], unfinished: pd.DataFrame
) -> None:
    """Per variant: ``failed``, ``killed`` and ``diverged`` (a non-finite loss) runs, and
    ``failures_matter`` where runs failed on seeds that the baseline finished and the
    variant did not."""
    from latentseg.report.stats import baseline_mask, pairing

    table = report.summary
    for name in ("failed", "killed", "diverged"):
        table[name] = 0
    table["failures_matter"] = False
    if unfinished.empty or not set(axes) <= set(unfinished.columns):
        return
    gone, _ = mark_inert(unfinished)
    error = gone.get("tags.latentseg.error", pd.Series("", index=gone.index)).fillna("")
    gone = gone.assign(
        _variant=gone[axes].map(str).agg("|".join, axis=1),
        _pair=pairing(gone, axes),
        _diverged=error.astype(str).str.startswith("NonFiniteLossError"),
    )
    done = runs.assign(
        _variant=runs[axes].map(str).agg("|".join, axis=1), _pair=pairing(runs, axes)
    )
    base_pairs = set(done.loc[baseline_mask(runs, axes, report.baseline), "_pair"])
    for i, row in table.iterrows():
        name = "|".join(str(row[k]) for k in report.axes)
        mine = gone[gone["_variant"] == name]
        if mine.empty:
            continue
        table.loc[i, "failed"] = int((mine["status"] == "FAILED").sum())
        table.loc[i, "killed"] = int((mine["status"] == "KILLED").sum())
        table.loc[i, "diverged"] = int(mine["_diverged"].sum())
        finished = set(done.loc[done["_variant"] == name, "_pair"])
        lost = set(mine["_pair"]) & base_pairs - finished
        table.loc[i, "failures_matter"] = bool(lost) and row["verdict"] != "baseline"


def _failure_words(row) -> str:
    parts = [f"{int(row[k])} {k}" for k in ("failed", "killed") if int(row.get(k, 0) or 0)]
    diverged = int(row.get("diverged", 0) or 0)
    return " and ".join(parts) + (f" ({diverged} diverged)" if diverged else "") + " run(s)"


def _effect_notes(report: Report, decision: Decision) -> list[str]:
    """How the main effects and the adaptive looks were taken, where it matters."""
    notes = []
    effects = report.effects
    if not effects.empty and "balanced" in effects:
        partial = effects[~effects["balanced"].astype(bool)]
        for _, row in partial.iterrows():
            notes.append(
                f"Main effect {row['axis']} {row['value']} vs {row['baseline_value']}"
                f"{'' if row['scope'] == 'all' else ' on ' + str(row['scope'])}: over "
                f"{row['contexts']} contexts (cells are missing: failed, pruned or not run), "
                "so it is the effect where both values ran, not the balanced effect over the "
                "grid."
            )
    repeats = [
        frame[frame["counted_once"].astype(bool)]
        for frame in (report.summary, effects)
        if "counted_once" in frame
    ]
    repeated = sum(len(r) for r in repeats)
    if repeated:
        notes.append(
            f"{repeated} main effect(s) are the same test as a variant comparison (one axis "
            "crossed, or one dataset): the family holds each test once, and they share its "
            "verdict."
        )
    if report.rounds:
        notes.append(
            "Plots of means use the first round's seeds, which every variant ran; the details "
            "table gives each variant's mean beside the baseline's over the seeds they share "
            "(the baseline runs more seeds than most variants)."
        )
        if decision.until != "effects" and not effects.empty:
            notes.append(
                "Main effects use the first round's seeds: later rounds seed only the open "
                "comparisons' points and the baseline (until: variants). To give main effects "
                "more seeds, use seeds: {until: effects}."
            )
        early = pd.concat(
            [t.get("decided_round", pd.Series(dtype=float)) for t in (report.summary, effects)]
        )
        if ((early > 0) & (early < len(report.rounds))).any():
            notes.append(
                "A comparison decided at an earlier look keeps that look's difference: "
                "stopping when a difference looks large biases it away from 0 (its interval "
                "still holds: it is the look's repeated confidence interval)."
            )
    return notes


def _notes(collected: Collected, scored: _Scored) -> list[str]:
    """Left-out, merged and metric-less runs, the negative control and the inert params."""
    control = negative_control(scored.runs)
    return [
        collected.left_out_line(),
        *([_merged_note(scored.merged)] if scored.merged else []),
        *(
            [f"{scored.missing} finished run(s) report no {scored.column} and are left out."]
            if scored.missing
            else []
        ),
        *([control] if control else []),
        *([scored.inert_note] if scored.inert_note else []),
    ]


def _drawings(
    report: Report, runs: pd.DataFrame, axes: list[str], store, collected: Collected
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The report's figures and, with a tracking ``store``, the learning curves and the
    images logged by the best run (and its study)."""
    keys, column, table = report.axes, report.metric, report.summary
    if report.rounds:  # adaptive seeds: means over the seeds every variant ran (round 1)
        runs = runs[run_rounds(runs) == 1]
        first = summarize(runs, axes, column, metric_bounds(column))
        table = table.drop(columns=["mean"]).merge(first[[*keys, "mean"]], on=keys, how="left")
    drawn = _figures(
        runs, table, report.effects, axes, keys, column, report.family, report.baseline
    )
    if store is None:
        return drawn, {}
    store = TrackingStore.of(store)
    drawn.update(_curves(store, runs, table, axes, keys, column, report.baseline))
    return drawn, _run_images(store, runs, column, collected)


def _merged_note(merged: int) -> str:
    return (
        f"{merged} run(s) repeat a configuration and seed already counted (re-runs, retried "
        "trials, or one model under params it ignores): each configuration and seed counts "
        "once, the latest run kept."
    )


def _effects(runs, axes, column, baseline, bounds) -> pd.DataFrame:
    """Main effects over all runs and, when the dataset varies, on each dataset too."""
    scopes = [("all", runs)]
    for stratum in (a for a in axes if is_stratum(a)):
        for value in sorted(runs[stratum].map(str).unique()):
            scopes.append((value, runs[runs[stratum].map(str) == value]))
    frames = [
        axis_effects(subset, axes, column, baseline, bounds).assign(scope=scope)
        for scope, subset in scopes
    ]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _cost_ratios(table: pd.DataFrame, axes: list[str], keys: list[str]) -> pd.DataFrame:
    """``flops_ratio`` and ``time_ratio`` of each variant against the baseline of its dataset."""
    tasks = [k for k in keys if is_stratum(k)]
    base = table[table["is_baseline"].astype(bool)]
    if tasks:
        merged = table.merge(
            base[[*tasks, "flops_per_image", "train_images_per_s"]],
            on=tasks, how="left", suffixes=("", "_base"),
        )  # fmt: skip
    else:
        merged = table.assign(
            flops_per_image_base=base["flops_per_image"].mean() if len(base) else math.nan,
            train_images_per_s_base=base["train_images_per_s"].mean() if len(base) else math.nan,
        )
    table = table.copy()
    table["flops_ratio"] = (merged["flops_per_image"] / merged["flops_per_image_base"]).to_numpy()
    table["time_ratio"] = (
        merged["train_images_per_s_base"] / merged["train_images_per_s"]
    ).to_numpy()
    return table


def label(row, keys: list[str], skip: tuple[str, ...] = ()) -> str:
    """``num_latents 16, expert_attention True``: a variant in plain words."""
    parts = [f"{k.split('.')[-1]} {row[k]}" for k in keys if k not in skip]
    return ", ".join(parts) or "all runs"


def _on(row, keys: list[str]) -> str:
    tasks = [k for k in keys if is_stratum(k)]
    return f" (on {row[tasks[0]]})" if tasks else ""


def change(row, keys: list[str], baseline: dict[str, Any]) -> str:
    """A variant by what it changes from the baseline: ``kv_rank 16, latent_depth 2``."""
    parts = [
        f"{k.split('.')[-1]} {row[k]}"
        for k in keys
        # n/a: a key this variant ignores (num_latents without expert attention) is no change
        if not is_stratum(k) and str(row[k]) not in (str(baseline[k]), NOT_APPLICABLE)
    ]
    return ", ".join(parts) or "the baseline"


def _findings(axes, keys, column, table, effects) -> list[str]:
    """One sentence per main effect (with its verdict and adjusted interval) and the variants
    on the Pareto front."""
    from latentseg.report.plots import pareto_front

    lines = []
    for _, row in effects.iterrows():
        prefix = "" if row["scope"] == "all" else f"On {row['scope']}: "
        lines.append(
            f"{prefix}{row['axis']} {row['value']} instead of {row['baseline_value']}: "
            f"**{row['verdict']}**, {column} {_signed(row['diff'])} "
            f"[{_signed(row['diff_ci_low'])}, {_signed(row['diff_ci_high'])}], "
            f"adjusted p {_fmt(row['p_adjusted'], 3)}, {int(row['n_pairs'])} seed blocks"
            + _cost(row)
            + "."
        )
    task_keys = [a.removeprefix("params.") for a in axes if is_stratum(a)]
    groups = table.groupby(task_keys, sort=True) if task_keys else [((), table)]
    for task, part in groups:  # a front per task: params and metric compare within one
        if len(part) < 2 or not part["params"].notna().all():
            continue
        front = part[pareto_front(part, "params", "mean")].sort_values("params")
        names = "; ".join(
            label(r, keys, tuple(task_keys)) + f" ({int(r['params']):,} params, {r['mean']:.4f})"
            for _, r in front.iterrows()
        )
        where = f" on {', '.join(map(str, task))}" if task_keys else ""
        lines.append(f"Pareto front{where} (fewest parameters for the metric): {names}.")
    return lines


def _curves(store: TrackingStore, runs, table, axes, keys, column, baseline) -> dict[str, Any]:
    from latentseg.report import plots

    per_epoch = "val_" + column.removeprefix("test_")  # validation curves: what picked the epoch
    variants = table.sort_values("mean", ascending=False)
    label = lambda row: ", ".join(str(row[k]) for k in keys) if keys else "all"  # noqa: E731
    order = [label(row) for _, row in variants.head(MAX_CURVES).iterrows()]
    base = ", ".join(str(baseline[k]) for k in keys) if keys else "all"
    if base not in order:
        order.append(base)
    labelled = runs.assign(variant=runs[axes].map(str).agg(", ".join, axis=1) if axes else "all")
    # At most CURVE_SEEDS runs per variant: the curves stay cheap for studies of thousands of runs.
    chosen = (
        labelled[labelled["variant"].isin(order)].groupby("variant", sort=False).head(CURVE_SEEDS)
    )
    histories = store.metric_histories(chosen["run_id"].tolist(), per_epoch)
    figure = plots.learning_curves(
        histories, runs, axes, per_epoch.replace("_", " "), order, metric_bounds(per_epoch)
    )
    return {"learning_curves": figure} if figure is not None else {}


def _run_images(store: TrackingStore, runs, column, collected) -> dict[str, bytes]:
    """The best run's attention maps (at its best epoch) and, for a study, Optuna's
    parameter-importance plots from its latest finished parent run."""
    import tempfile

    images: dict[str, bytes] = {}
    best = runs.sort_values(f"metrics.{column}", ascending=False).iloc[0]
    with tempfile.TemporaryDirectory() as tmp:
        listed = [
            path
            for path in store.artifact_paths(best["run_id"], "images")
            if path.endswith(".png") and "compressed" not in path
        ]
        epoch = int(best.get("metrics.best_epoch", 0) or 0)
        for key in ("predictions", "latent_attention", "expert_assignment"):
            candidates = [p for p in listed if p.split("/")[-1].startswith(f"{key}+step+")]
            steps = {p: int(p.split("+step+")[1].split("+")[0]) for p in candidates}
            if steps:
                chosen = min(steps, key=lambda p: (steps[p] != epoch, -steps[p]))
                for path in store.download_artifacts(best["run_id"], [chosen], tmp):
                    images[f"best_run_{key}"] = Path(path).read_bytes()
        study = best.get("tags.latentseg.study")
        if isinstance(study, str) and study:
            parent = store.parent_run(study, collected.experiment_ids, status="FINISHED")
            if parent is not None:
                run_id = parent.info.run_id
                paths = [
                    path
                    for path in store.artifact_paths(run_id, "plots")
                    if path.startswith("plots/param_importances")
                ]
                for path in store.download_artifacts(run_id, paths, tmp):
                    images[Path(path).stem] = Path(path).read_bytes()
    return images


def _cost(row) -> str:
    """``; FLOPs x1.05, training time per image x1.31`` (what the change costs)."""
    parts = [
        f"{name} x{row[key]:.2f}"
        for key, name in (("flops_ratio", "FLOPs"), ("time_ratio", "training time per image"))
        if key in row and not math.isnan(row[key])
    ]
    return "; " + ", ".join(parts) if parts else ""


def _figures(runs, table, effects, axes, keys, column, family, baseline) -> dict[str, Any]:
    from latentseg.report import plots

    label_ = column.replace("_", " ")
    bounds = metric_bounds(column)
    metric_column = f"metrics.{column}"
    made = {
        "forest": plots.forest(_forest_rows(table, effects, keys, baseline), family, label_),
        "metric_vs_latents": plots.metric_vs_latents(runs, metric_column, label_, bounds),
        "expert_attention": plots.expert_attention_effect(runs, metric_column, label_, bounds),
        "latents_heads_heatmap": plots.latents_heads_heatmap(runs, metric_column, label_),
        "accuracy_vs_cost": plots.accuracy_vs_cost(table, keys, label_),
        "latent_diagnostics": plots.latent_diagnostics(runs, axes),
        "router_load": plots.router_load(runs, axes),
    }
    return {name: fig for name, fig in made.items() if fig is not None}


def _forest_rows(
    table: pd.DataFrame, effects: pd.DataFrame, keys: list[str], baseline: dict[str, Any]
) -> pd.DataFrame:
    """The compared rows of the verdict table and the main effects, for the forest plot (a
    main effect that is a variant's comparison is drawn once, as the variant)."""
    columns = ["name", "diff", "diff_ci_low", "diff_ci_high", "verdict", "shown", "group"]
    if "diff" not in table:
        return pd.DataFrame(columns=columns)
    variants = table[table["verdict"] != "baseline"].sort_values("diff", ascending=False)
    rows = [
        [change(r, keys, baseline) + _on(r, keys), r["diff"], r["diff_ci_low"],
         r["diff_ci_high"], r["verdict"], verdict_cell(r), "variant"]
        for _, r in variants.iterrows()
    ]  # fmt: skip
    for _, r in effects.iterrows():
        if bool(r.get("counted_once") or False):
            continue
        scope = "" if r["scope"] == "all" else f" (on {r['scope']})"
        name = f"{r['axis'].split('.')[-1]} {r['value']} vs {r['baseline_value']}{scope}"
        rows.append(
            [name, r["diff"], r["diff_ci_low"], r["diff_ci_high"], r["verdict"],
             verdict_cell(r), "main effect"]
        )  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


CHANCE_TOLERANCE = 0.02  # pixel accuracy within this of 1/num_classes counts as chance


def negative_control(runs: pd.DataFrame) -> str | None:
    """For runs on ``noise`` data (random labels): is val pixel accuracy at chance?"""
    column, dataset = "metrics.test_pixel_accuracy", "params.data.dataset"
    if dataset not in runs or column not in runs:
        return None
    noise = runs[runs[dataset] == "noise"]
    if noise.empty:
        return None
    classes = pd.to_numeric(noise["params.model.num_classes"], errors="coerce").dropna().unique()
    if len(classes) != 1:
        return "Negative control (noise data): runs with different class counts; not checked."
    chance = 1 / float(classes[0])
    mean, _, low, high = mean_ci(noise[column].tolist(), bounds=(0.0, 1.0))
    at_chance = abs(mean - chance) <= CHANCE_TOLERANCE or (
        not math.isnan(low) and low <= chance <= high
    )
    verdict = (
        "at chance, as it must be"
        if at_chance
        else "NOT at chance: the model learns random labels, so something leaks (check the data and the split)"
    )
    return (
        f"Negative control (noise data, {len(noise)} runs): test pixel accuracy {mean:.4f} "
        f"(95% CI [{_fmt(low)}, {_fmt(high)}]) against chance {chance:.4f}: {verdict}."
    )


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, (float, np.floating)):
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _signed(value: float, digits: int = 4) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def _interval(row, low="diff_ci_low", high="diff_ci_high") -> str:
    return f"{_signed(row.get('diff', math.nan))} [{_signed(row.get(low, math.nan))}, {_signed(row.get(high, math.nan))}]"


def _ratio_cell(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"x{value:.2f}"


def _seeds_cell(value: float) -> str:
    if value is None or math.isnan(value):
        return "–"
    return "> 1000" if math.isinf(value) else str(int(value))


def _seeds_pair(row) -> str:
    """``6 / 14``: seed pairs to detect a difference of SESOI, and to show equivalence."""
    return (
        f"{_seeds_cell(row.get('seeds_needed', math.nan))} / "
        f"{_seeds_cell(row.get('seeds_equivalence', math.nan))}"
    )


def verdict_cell(row) -> str:
    """The verdict in words: ``equivalent (slightly worse)`` for a decided but negligible
    difference, ``better (relevant)`` when the whole interval lies beyond the SESOI,
    ``equivalent (exploratory)`` under bh (its intervals are not simultaneous), a ``*`` where
    failed runs may be the effect (the notes say which)."""
    verdict = str(row["verdict"])
    direction = row.get("direction") or ""
    if verdict == "equivalent" and bool(row.get("exploratory") or False):
        verdict += " (exploratory)"
    elif verdict == "equivalent" and direction in ("better", "worse"):
        verdict += f" (slightly {direction})"
    elif verdict in ("better", "worse") and bool(row.get("relevant") or False):
        verdict += " (relevant)"
    if bool(row.get("failures_matter") or False):
        verdict += " *"
    return verdict


SEED_VALUES_UP_TO = 5  # with this many seeds or fewer, each seed's value is shown


def _round_cell(row) -> str:
    """The round whose look decided a comparison ('–' while it is open)."""
    value = row.get("decided_round", math.nan)
    return "–" if value is None or pd.isna(value) or int(value) == 0 else str(int(value))


_Section = tuple[str, str, list[str], list[list[str]]]  # title, id, header, rows
SEEDS_HEAD = "seeds: detect / equivalence"


def _sections(report: Report) -> list[_Section]:
    """The report's tables, in order: (title, id, header, rows); shared by Markdown and HTML."""
    sections = [_verdicts_section(report)]
    if report.rounds:
        sections.append(_rounds_section(report))
    if not report.effects.empty:
        sections.append(_effects_section(report))
    if not report.interactions.empty:
        sections.append(_interactions_section(report))
    sections.append(_details_section(report))
    return sections


def _verdicts_section(report: Report) -> _Section:
    """Each variant against the baseline, by dataset, decided verdicts first."""
    keys, table = report.axes, report.summary
    tasks = [k for k in keys if is_stratum(k)]
    order = table.assign(
        _base=table["verdict"] != "baseline", _open=table["verdict"] == "inconclusive"
    ).sort_values(
        [*tasks, "_base", "_open", "diff"], ascending=[*([True] * len(tasks)), True, True, False]
    ) if "diff" in table else table  # decided verdicts lead  # fmt: skip
    adaptive = bool(report.rounds)
    head = [*(["dataset"] if tasks else []), "change from the baseline", "verdict"]
    head += [*(["round"] if adaptive else []), "difference [adjusted CI]"]
    head += ["adjusted p", "pairs", "MDE", SEEDS_HEAD, "FLOPs", "time/img"]
    rows = []
    for _, row in order.iterrows():
        base = row["verdict"] == "baseline"
        rows.append(
            [*([str(row[tasks[0]])] if tasks else []),
             "(baseline)" if base else change(row, keys, report.baseline),
             verdict_cell(row),
             *([_round_cell(row)] if adaptive else []),
             "–" if base else _interval(row),
             "–" if base else _fmt(row.get("p_adjusted", math.nan), 3),
             str(int(row.get("n_pairs", row["n"]) or 0)),
             "–" if base else _fmt(row.get("mde", math.nan)),
             "–" if base else _seeds_pair(row),
             "–" if base else _ratio_cell(row.get("flops_ratio", math.nan)),
             "–" if base else _ratio_cell(row.get("time_ratio", math.nan))]
        )  # fmt: skip
    return "Verdicts", "verdicts", head, rows


def _rounds_section(report: Report) -> _Section:
    """Adaptive seeds: what each look spent and decided."""
    rows = [
        [str(r["round"]), str(r["seeds"]), f"{r['alpha']:.4f}", str(r["decided"]), str(r["open"])]
        for r in report.rounds
    ]
    head = ["round", "seeds per open point", "alpha spent", "decided so far", "inconclusive"]
    return "Rounds of seeds", "rounds", head, rows


def _effects_section(report: Report) -> _Section:
    """Each main effect, decided verdicts first."""
    rows = [
        [str(r["axis"]), f"{r['value']} vs {r['baseline_value']}",
         "all" if r["scope"] == "all" else str(r["scope"]), verdict_cell(r), _interval(r),
         _fmt(r["p_adjusted"], 3), str(int(r["n_pairs"])), str(r.get("contexts", "–")),
         _fmt(r["mde"]), _seeds_pair(r), _ratio_cell(r["flops_ratio"]),
         _ratio_cell(r["time_ratio"])]
        for _, r in report.effects.sort_values(
            "verdict", key=lambda v: v == "inconclusive", kind="stable"
        ).iterrows()  # decided verdicts lead
    ]  # fmt: skip
    head = ["axis", "change", "datasets", "verdict", "difference [adjusted CI]"]
    head += ["adjusted p", "seed blocks", "contexts", "MDE", SEEDS_HEAD, "FLOPs", "time/img"]
    return "Main effects", "effects", head, rows


def _interactions_section(report: Report) -> _Section:
    """Each two-way interaction, with its contrast when it has one."""
    rows = []
    for _, r in report.interactions.iterrows():
        contrast = (
            f"{_signed(r['contrast'])} [{_signed(r['contrast_ci95_low'])}, {_signed(r['contrast_ci95_high'])}]"
            if "contrast" in r and not pd.isna(r.get("contrast"))
            else "–"
        )
        rows.append(
            [f"{r['axis_a']} x {r['axis_b']}", str(r["levels"]), _fmt(r["F"], 2),
             f"{_fmt(r['df_num'], 0)}, {_fmt(r['df_den'], 0)}", str(int(r["n_blocks"])), _fmt(r["p"], 3),
             _fmt(r["p_adjusted"], 3), contrast]
        )  # fmt: skip
    head = ["axes", "levels", "F", "df", "seed blocks", "p", "Holm p", "interaction [95% CI]"]
    return "Interactions", "interactions", head, rows


def _details_section(report: Report) -> _Section:
    """Every variant, best mean first, with its unadjusted statistics and costs."""
    keys = report.axes
    order = "diff" if "diff" in report.summary else "mean"  # paired: the verdicts' order
    details = report.summary.sort_values(order, ascending=False, kind="stable")
    show_values = "seed_values" in details and details["n"].max() <= SEED_VALUES_UP_TO
    head = [*keys, "n", "mean", "95% CI", *(["per seed"] if show_values else [])]
    head += ["mean / baseline's, paired seeds"]
    head += ["diff", "95% CI of diff (unadjusted)", "p (unadjusted)", "Hedges g"]
    head += ["Wilcoxon p", "params", "GFLOP/img", "wall s"]
    rows = []
    for _, row in details.iterrows():
        rows.append(
            [*(str(row[k]) for k in keys), str(int(row["n"])), _fmt(row["mean"]),
             f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]",
             *([str(row["seed_values"])] if show_values else []),
             f"{_fmt(row.get('mean_paired', math.nan))} / {_fmt(row.get('baseline_mean_paired', math.nan))}",
             _signed(row.get("diff", math.nan)),
             f"[{_signed(row.get('diff_ci95_low', math.nan))}, {_signed(row.get('diff_ci95_high', math.nan))}]",
             _fmt(row.get("p", math.nan), 3), _fmt(row.get("hedges_g", math.nan), 2),
             _fmt(row.get("wilcoxon_p", math.nan), 3), _fmt(row["params"], 0),
             _fmt(row["flops_per_image"] / 1e9, 3), _fmt(row["wall_time_s"], 0)]
        )  # fmt: skip
    return "Details per variant", "summary", head, rows


def _lead(report: Report) -> list[str]:
    """The sentences above the verdict table: metric, baseline, decision rule, counts."""
    base = label(report.baseline, [k for k in report.axes if not is_stratum(k)])
    lines = [
        f"Metric: {report.metric}, the test split at each run's best-validation checkpoint "
        "(validation picks the epoch, test scores it).",
        f"Baseline: {base} ({report.baseline_reason}).",
    ]
    if report.family is not None:
        lines.append("Decision rule: " + report.family.describe(report.metric) + ".")
        counts = pd.concat(
            [report.summary["verdict"], report.effects.get("verdict", pd.Series(dtype=str))]
        ).value_counts()
        shown = [
            f"{counts.get(v, 0)} {v}" for v in ("better", "worse", "equivalent", "inconclusive")
        ]
        lines.append("Verdicts (variants and main effects): " + ", ".join(shown) + ".")
    lines += [f"**Warning:** {w}" for w in report.warnings]
    return lines


def _method(report: Report) -> str:
    family = report.family
    sesoi = _fmt(family.sesoi, 4) if family else "–"
    return (
        "How to read it. Each variant is compared with the baseline over runs paired by seed "
        "(within a dataset); each main effect is, within each seed, the mean over the other "
        "axes' combinations (contexts) of the difference the axis makes, then compared across "
        "seeds like a paired difference (contexts: how many of the grid's it covers). All of "
        "them form one family. better/worse: the test decided the sign, with the chance of any "
        "false sign in the whole report controlled, and the interval reaches past the smallest "
        f"effect of interest (±{sesoi}); relevant: all of the interval lies beyond it. "
        "equivalent: the interval lies within it, whether or not it excludes 0 (slightly "
        "better/worse: a decided but negligible difference). inconclusive: neither. The "
        "intervals are the family's: they hold together (see the decision rule). A test "
        "repeated in the family (a main effect that is also a variant's comparison) counts "
        "once. MDE: the smallest true difference this design detects with 80% power, with the "
        "observed spread. Seeds: detect / equivalence: the seed pairs at which a difference of "
        "the smallest effect of interest is found with 80% power, and at which equivalence is "
        "shown with 80% chance when the true difference is 0 (always more). Intervals never "
        "leave the metric's range. Interactions: the two-way terms estimated within each seed "
        "and tested across seeds (t-test, or Hotelling's T-squared for more than two levels), "
        "Holm-adjusted among themselves. Details: per-variant Student-t 95% intervals, means "
        "over the seeds paired with the baseline, and unadjusted per-comparison statistics "
        "(Hedges g is bias-corrected; Wilcoxon appears only from 6 pairs, where it can reject "
        "at 5%)."
    )


def _markdown(report: Report, collected: Collected, findings: list[str], shown: list[str]) -> str:
    lines = [f"# Ablation report: {report.name}", "", *(f"{x}\n" for x in _lead(report))]
    for title, _, head, rows in _sections(report):
        lines += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        lines.append("")
        if title == "Verdicts" and "forest" in shown:
            lines += ["![forest](plots/forest.png)", ""]
    lines += [_method(report), ""]
    if findings:
        lines += ["## Findings", "", *(f"- {line}" for line in findings), ""]
    lines += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    plots = [n for n in shown if n != "forest"]
    if plots:
        lines += ["## Plots", "", "\n\n".join(f"![{n}](plots/{n}.png)" for n in plots), ""]
    return "\n".join(lines)


def write(report: Report, out_dir: str | Path) -> list[Path]:
    """``report.md``, ``report.html``, ``summary.csv`` (and ``effects.csv`` and
    ``interactions.csv`` when there are any) and ``plots/*.png`` in ``out_dir``, written
    atomically; returns the paths of the documents, report.md, summary.csv and report.html
    first."""
    import base64
    import io

    import matplotlib.pyplot as plt

    out = Path(out_dir)
    try:
        (out / "plots").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"-o {out}: cannot create the report folder: {exc.strerror}") from None
    images: dict[str, bytes] = {}
    for name, fig in report.figures.items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        images[name] = buffer.getvalue()
    images.update(report.images)
    for name, data in images.items():
        atomic_write_bytes(out / "plots" / f"{name}.png", data)
    csv = atomic_write_bytes(out / "summary.csv", _summary_csv(report).to_csv(index=False).encode())
    md = atomic_write_bytes(out / "report.md", report.markdown.encode())
    embedded = {name: base64.b64encode(data).decode() for name, data in images.items()}
    html = atomic_write_bytes(out / "report.html", _html(report, embedded).encode())
    tables = [
        atomic_write_bytes(out / f"{name}.csv", frame.to_csv(index=False).encode())
        for name, frame in (
            ("effects", report.effects.drop(columns=TEST_KEY, errors="ignore")),
            ("interactions", report.interactions),
        )
        if not frame.empty
    ]
    return [md, csv, html, *tables]


SUMMARY_LEAD = [
    "verdict", "direction", "relevant", "diff", "diff_ci_low", "diff_ci_high", "p_adjusted",
    "n_pairs", "mde", "seeds_needed", "seeds_equivalence", "decided_round", "ci_level",
]  # fmt: skip


def _summary_csv(report: Report) -> pd.DataFrame:
    """The variants' table with the verdict columns first after the axes."""
    table = report.summary
    lead = [*report.axes, *(c for c in SUMMARY_LEAD if c in table)]
    return table[lead + [c for c in table.columns if c not in lead and not c.startswith("_")]]


_SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.from(body.rows), ascending = th.dataset.order !== 'asc';
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      var nx = parseFloat(x), ny = parseFloat(y);
      var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return ascending ? cmp : -cmp;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    table.querySelectorAll('th').forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = ascending ? 'asc' : 'desc';
  });
});
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
#verdicts td:nth-child(-n+2), #effects td:nth-child(-n+3) { text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[data-order="asc"]::after { content: " \\25B2"; } th[data-order="desc"]::after { content: " \\25BC"; }
tr.baseline td { font-weight: bold; } td.worse { color: #b00; } td.better { color: #060; }
td.equivalent { color: #036; } td.inconclusive { color: #777; }
img { max-width: 100%; display: block; margin: 1rem 0; }
"""


def _inline(text: str) -> str:
    """Escaped HTML of a line of the report's prose: **bold** and `code` become tags."""
    import html
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _html(report: Report, images: dict[str, str]) -> str:
    import html

    def image(name: str) -> str:
        return (
            f"<h3>{html.escape(name.replace('_', ' '))}</h3>"
            f'<img alt="{html.escape(name)}" src="data:image/png;base64,{images[name]}">'
        )

    parts = [f"<p>{_inline(line)}</p>" for line in _lead(report)]
    for title, table_id, head, rows in _sections(report):
        verdict_at = head.index("verdict") if "verdict" in head else -1
        body = []
        for cells in rows:
            tds = []
            for i, cell in enumerate(cells):
                # the verdict's first word: "equivalent (slightly worse)" is equivalent
                css = f' class="{html.escape(cell.split()[0])}"' if i == verdict_at else ""
                tds.append(f'<td data-value="{html.escape(cell)}"{css}>{html.escape(cell)}</td>')
            base = (
                ' class="baseline"' if verdict_at >= 0 and cells[verdict_at] == "baseline" else ""
            )
            body.append(f"<tr{base}>" + "".join(tds) + "</tr>")
        parts.append(
            f'<h2>{html.escape(title)}</h2><div style="overflow-x: auto">'
            f'<table class="sortable" id="{table_id}"><thead><tr>'
            + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        )
        if table_id == "verdicts" and "forest" in images:
            parts.append(image("forest"))
    parts.append(f"<p>{_inline(_method(report))} Click a column to sort.</p>")
    if report.findings:
        items = "".join(f"<li>{_inline(n)}</li>" for n in report.findings)
        parts.append(f"<h2>Findings</h2><ul>{items}</ul>")
    items = "".join(f"<li>{_inline(n)}</li>" for n in report.notes)
    parts.append(f"<h2>Notes</h2><ul>{items}</ul>")
    plots = [n for n in images if n != "forest"]
    if plots:
        parts.append("<h2>Plots</h2>" + "".join(image(n) for n in plots))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Ablation report: {html.escape(report.name)}</title><style>{_STYLE}</style></head>
<body>
<h1>Ablation report: {html.escape(report.name)}</h1>
{"".join(parts)}
<script>{_SORT_SCRIPT}</script>
</body></html>
"""


def verdict_lines(report: Report) -> list[str]:
    """The verdicts as terminal lines: the decision rule, one line per compared variant and
    main effect, and what deciding the open ones would take."""
    if report.family is None:
        return ["no axis varies: nothing to compare"]
    lines = [report.family.describe(report.metric)]
    rows = []
    keys = report.axes
    for _, row in report.summary[report.summary["verdict"] != "baseline"].iterrows():
        rows.append((change(row, keys, report.baseline) + _on(row, keys), row))
    for _, row in report.effects.iterrows():
        scope = "" if row["scope"] == "all" else f" on {row['scope']}"
        rows.append(
            (
                f"main effect: {row['axis'].split('.')[-1]} {row['value']} vs {row['baseline_value']}{scope}",
                row,
            )
        )
    rows.sort(key=lambda item: item[1]["verdict"] == "inconclusive")  # decided verdicts lead
    adaptive = bool(report.rounds)
    width = min(60, max((len(name) for name, _ in rows), default=10))
    lines.append(
        f"  {'compared with the baseline':<{width}}  {'verdict':<27}  {'round  ' if adaptive else ''}"
        f"{'difference [adjusted CI]':<30}  adj p  pairs  seeds: detect / equivalence"
    )
    for name, row in rows:
        lines.append(
            f"  {name[:width]:<{width}}  {verdict_cell(row):<27}  "
            f"{f'{_round_cell(row):>5}  ' if adaptive else ''}{_interval(row):<30}  "
            f"{_fmt(row['p_adjusted'], 3):>5}  {int(row['n_pairs']):>5}  {_seeds_pair(row):>27}"
        )
    open_rows = [row for _, row in rows if row["verdict"] == "inconclusive"]
    if open_rows:

        def most(column: str) -> str:
            needed = [row[column] for row in open_rows if not math.isnan(row.get(column, math.nan))]
            return _seeds_cell(max(needed)) if needed else "an unknown number of"

        lines.append(
            f"{len(open_rows)} inconclusive: at ±{_fmt(report.family.sesoi)}, detecting a "
            f"difference would take up to {most('seeds_needed')} seeds, showing equivalence up "
            f"to {most('seeds_equivalence')} (80% power at the "
            f"{'last planned look' if report.family.looks else 'family'}'s level)."
        )
    lines += [f"note: {note}" for note in report.warnings]
    return lines
