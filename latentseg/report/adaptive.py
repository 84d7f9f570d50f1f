"""The judge of a study with adaptive seeds: after each round, the report's verdicts at that
round's look, and the variants whose comparison is still open.

The study calls :func:`judge` (``latentseg.study.judgement.Judge``); it reads the study's seed
runs from MLflow as ``latentseg report`` does, with the decision rule logged on the study's
parent run (its ``report:`` section and its looks), so the rounds and the final report
decide alike.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from latentseg.errors import LatentSegError
from latentseg.report.collect import collect
from latentseg.report.decision import decision_for
from latentseg.report.labels import change, label
from latentseg.report.render import build
from latentseg.report.stats import is_stratum, mark_inert
from latentseg.report.verdicts import out_of_reach, spending
from latentseg.study.judgement import Judgement, Need
from latentseg.tracking.store import TrackingStore


def judge(loaded, tracking_uri: str, round_: int) -> Judgement:
    store = TrackingStore.open(tracking_uri, create=False)
    collected = collect(store, study=loaded.name)
    parent = store.parent_run(loaded.name, collected.experiment_ids)
    decision = decision_for({}, parent.data.params if parent else {})
    try:
        report = build(collected, loaded.name, decision.primary, decision=decision, figures=False)
    except LatentSegError:  # nothing finished (every trial pruned or failed): nothing to seed
        return Judgement([], 0, 0)
    return needs(report, collected.runs, loaded.spec.adaptive)


def needs(report, runs, adaptive) -> Judgement:
    """What the next round needs, from a ``report`` of the ``runs`` (as collected, with
    their ``tags.latentseg.trial_number``) of a study whose seeds are ``adaptive``."""
    if report.family is None:  # one point: nothing to compare, nothing to seed
        return Judgement([], 0, 0)
    trials_of = _trials_by_point(runs, report.axes)
    table = _comparison_records(report)
    if adaptive.until == "effects":
        seeded, open_count = _seed_every_point_while_an_effect_is_open(report, trials_of)
    else:
        seeded, open_count = _seed_open_variants(report, trials_of, adaptive.looks())
    decided = sum(1 for record in table if record["verdict"] in ("better", "worse", "equivalent"))
    return Judgement(seeded, open_count, decided, table)


def _point(row, keys: list[str]) -> str:
    """A grid point's key: its value on each axis."""
    return "|".join(str(row[k]) for k in keys)


def _trials_by_point(runs: pd.DataFrame, keys: list[str]) -> dict[str, list[int]]:
    """The trial numbers whose runs make each grid point (with the params as the report
    reads them: n/a where the model ignores one)."""
    runs, _ = mark_inert(runs)
    run_keys = runs[[f"params.{k}" for k in keys]].map(str).agg("|".join, axis=1)
    return (
        runs.assign(_key=run_keys)
        .groupby("_key")["tags.latentseg.trial_number"]
        .agg(lambda numbers: sorted({int(n) for n in numbers.dropna()}))
        .to_dict()
    )


def _on_task(row, keys: list[str]) -> str:
    """ " on digits" when the dataset varies, else nothing."""
    tasks = [k for k in keys if is_stratum(k)]
    return f" on {row[tasks[0]]}" if tasks else ""


def _variant_name(row, report) -> str:
    return f"{change(row, report.axes, report.baseline)}{_on_task(row, report.axes)}"


def _comparison_records(report) -> list[dict[str, Any]]:
    """One record per test, the variants then the main effects (NaN as None); a main
    effect that is a variant's comparison is that comparison's record."""
    variants = report.summary[report.summary["verdict"] != "baseline"]
    effects = report.effects
    if "counted_once" in effects:
        effects = effects[~effects["counted_once"].astype(bool)]
    return [_record(_variant_name(row, report), row) for _, row in variants.iterrows()] + [
        _record(f"main effect: {r['axis']} {r['value']} vs {r['baseline_value']} ({r['scope']})", r)
        for _, r in effects.iterrows()
    ]


def _record(comparison: str, row) -> dict[str, Any]:
    return {
        "comparison": comparison,
        "verdict": row["verdict"],
        "direction": row.get("direction") or "",
        "diff": _number(row["diff"]),
        "ci_low": _number(row["diff_ci_low"]),
        "ci_high": _number(row["diff_ci_high"]),
        "n_pairs": int(row["n_pairs"]),
        "decided_round": int(row.get("decided_round", 0) or 0),
    }


def _number(value) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _seed_every_point_while_an_effect_is_open(report, trials_of) -> tuple[list[Need], int]:
    """``until: effects``: every point gets seeds while a main effect is inconclusive."""
    effects = report.effects
    open_effects = (
        effects[effects["verdict"] == "inconclusive"] if "verdict" in effects else effects.iloc[:0]
    )
    if not len(open_effects):
        return [], 0
    reason = "main effect open: " + ", ".join(
        f"{r['axis']} {r['value']} vs {r['baseline_value']}" for _, r in open_effects.iterrows()
    )
    seeded = [
        Need(trials_of.get(_point(row, report.axes), []), reason)
        for _, row in report.summary.iterrows()
    ]
    return seeded, len(open_effects)


def _seed_open_variants(report, trials_of, looks: list[int]) -> tuple[list[Need], int]:
    """``until: variants``: each open comparison that the last look could still decide gets
    seeds, and so does the baseline it is compared with (on its dataset)."""
    family = report.family
    last_error = spending(family.alpha, looks)[-1] / max(family.size, 1)
    summary = report.summary
    open_rows = [
        row
        for _, row in summary[summary["verdict"] != "baseline"].iterrows()
        if _still_open(row, looks[-1], last_error, family.sesoi)
    ]
    seeded = [
        Need(
            trials_of.get(_point(row, report.axes), []), f"{_variant_name(row, report)} vs baseline"
        )
        for row in open_rows
    ]
    return seeded + _baselines_of(report, open_rows, trials_of), len(open_rows)


def _still_open(row, max_seeds: int, last_error: float, sesoi: float) -> bool:
    """Inconclusive, and within reach of a decision at ``max_seeds``."""
    if row["verdict"] != "inconclusive":
        return False
    # identical differences on every seed pair (a replicate of the baseline) never decide
    if row["n_pairs"] >= 2 and not (row["se"] > 0):
        return False
    reach = out_of_reach(row["diff"], row["se"], int(row["n_pairs"]), max_seeds, last_error, sesoi)
    return not reach


def _baselines_of(report, open_rows, trials_of) -> list[Need]:
    """The baseline of each dataset that open comparisons wait on."""
    keys = report.axes
    tasks = [k for k in keys if is_stratum(k)]
    variant_keys = [k for k in keys if not is_stratum(k)]
    seeded = []
    for _, base in report.summary[report.summary["verdict"] == "baseline"].iterrows():
        waiting = [r for r in open_rows if all(str(r[t]) == str(base[t]) for t in tasks)]
        if waiting:
            seeded.append(
                Need(
                    trials_of.get(_point(base, keys), []),
                    f"baseline ({label(report.baseline, variant_keys)}{_on_task(base, keys)}) "
                    f"of {len(waiting)} open comparison(s)",
                )
            )
    return seeded
