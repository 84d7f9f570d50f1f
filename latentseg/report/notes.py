"""What a report says beside its verdicts: runs left out or merged, the negative control,
warnings a reader must not miss (a rule that differs from the study's, a secondary metric,
runs computed differently, failures that may be the effect) and notes on how the main
effects and the adaptive looks were taken."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from latentseg.report.cells import fmt
from latentseg.report.labels import change, on_dataset
from latentseg.report.stats import baseline_mask, mark_inert, mean_ci, pairing

if TYPE_CHECKING:
    from latentseg.report.collect import Collected, Scored
    from latentseg.report.decision import Decision
    from latentseg.report.tables import Report


NUMERICS = {
    "tags.latentseg.git_commit": "code (git commit)",
    "tags.latentseg.cpu_capability": "CPU capability",
    "tags.latentseg.native_kernel": "native kernel",
    "tags.latentseg.weight_gradient": "weight-gradient path",
}


def _warnings(
    report: Report, runs: pd.DataFrame, axes: list[str], decision: Decision, primary: str
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
    if report.metric != primary:  # primary: the study's primary metric's column
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
            f"* {change(row, report.axes, report.baseline)}{on_dataset(row, report.axes)}: "
            f"{_failure_words(row)} on seeds the baseline finished; those seeds are missing "
            "from its comparison, and failures can be the effect (its verdict is over the "
            "seeds that finished)."
        )
    return out


def _numerics_warnings(report: Report, runs: pd.DataFrame, axes: list[str]) -> list[str]:
    """One warning per kind of numerics (code, CPU capability, kernel, gradient path) that
    differs between runs that a comparison pairs."""
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
        # the baseline's value on each variant run's pair, compared in one vectorised step
        other = pairs[~is_base].map(base_value)
        mixed = set(variant[~is_base][other.notna() & (other != values[~is_base])])
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


def _notes(collected: Collected, scored: Scored) -> list[str]:
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


def _merged_note(merged: int) -> str:
    return (
        f"{merged} run(s) repeat a configuration and seed already counted (re-runs, retried "
        "trials, or one model under params it ignores): each configuration and seed counts "
        "once, the latest run kept."
    )


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
        f"(95% CI [{fmt(low)}, {fmt(high)}]) against chance {chance:.4f}: {verdict}."
    )
