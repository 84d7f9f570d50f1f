"""The judge of a study with adaptive seeds: after each round, the report's verdicts at that
round's look, and the variants whose comparison is still open.

The study calls :func:`judge` (``latentseg.study.rounds.Judge``); it reads the study's seed
runs from MLflow as ``latentseg report`` does, with the decision rule logged on the study's
parent run (its ``report:`` section and its looks), so the rounds and the final report
decide alike.
"""

from __future__ import annotations

import math

from latentseg.study.rounds import Judgement, Need


def judge(loaded, tracking_uri: str, round_: int) -> Judgement:
    from latentseg.errors import LatentSegError
    from latentseg.report.collect import collect
    from latentseg.report.render import build, decision_for
    from latentseg.tracking.store import TrackingStore

    store = TrackingStore.open(tracking_uri, create=False)
    collected = collect(store, study=loaded.name)
    parent = store.parent_run(loaded.name, collected.experiment_ids)
    decision = decision_for({}, parent.data.params if parent else {})
    try:
        report = build(collected, loaded.name, decision=decision, figures=False)
    except LatentSegError:  # nothing finished (every trial pruned or failed): nothing to seed
        return Judgement([], 0, 0)
    return needs(report, collected.runs, loaded.spec.adaptive)


def needs(report, runs, adaptive) -> Judgement:
    """What the next round needs, from a ``report`` of the ``runs`` (as collected, with
    their ``tags.latentseg.trial_number``) of a study whose seeds are ``adaptive``."""
    from latentseg.report.render import change, label
    from latentseg.report.stats import is_stratum, mark_inert
    from latentseg.report.verdicts import out_of_reach, spending

    if report.family is None:  # one point: nothing to compare, nothing to seed
        return Judgement([], 0, 0)
    keys = report.axes
    runs, _ = mark_inert(runs)
    run_keys = runs[[f"params.{k}" for k in keys]].map(str).agg("|".join, axis=1)
    trials_of = (
        runs.assign(_key=run_keys)
        .groupby("_key")["tags.latentseg.trial_number"]
        .agg(lambda numbers: sorted({int(n) for n in numbers.dropna()}))
        .to_dict()
    )
    summary = report.summary
    rows = summary[summary["verdict"] != "baseline"]
    tasks = [k for k in keys if is_stratum(k)]

    def key(row) -> str:
        return "|".join(str(row[k]) for k in keys)

    def name(row) -> str:
        scope = f" on {row[tasks[0]]}" if tasks else ""
        return f"{change(row, keys, report.baseline)}{scope}"

    family = report.family
    looks = adaptive.looks()
    last_error = spending(family.alpha, looks)[-1] / max(family.size, 1)

    def still_open(row) -> bool:
        if row["verdict"] != "inconclusive":
            return False
        # identical differences on every seed pair (a replicate of the baseline) never decide
        if row["n_pairs"] >= 2 and not (row["se"] > 0):
            return False
        reach = out_of_reach(
            row["diff"], row["se"], int(row["n_pairs"]), looks[-1], last_error, family.sesoi
        )
        return not reach

    effects = report.effects
    open_effects = (
        effects[effects["verdict"] == "inconclusive"] if "verdict" in effects else effects.iloc[:0]
    )
    table = [
        {"comparison": name(row), "verdict": row["verdict"], "diff": row["diff"],
         "ci_low": row["diff_ci_low"], "ci_high": row["diff_ci_high"],
         "n_pairs": int(row["n_pairs"]), "decided_round": int(row.get("decided_round", 0) or 0)}
        for _, row in rows.iterrows()
    ] + [
        {"comparison": f"main effect: {r['axis']} {r['value']} vs {r['baseline_value']} ({r['scope']})",
         "verdict": r["verdict"], "diff": r["diff"], "ci_low": r["diff_ci_low"],
         "ci_high": r["diff_ci_high"], "n_pairs": int(r["n_pairs"]),
         "decided_round": int(r.get("decided_round", 0) or 0)}
        for _, r in effects.iterrows()
    ]  # fmt: skip
    for record in table:
        for field in ("diff", "ci_low", "ci_high"):
            value = record[field]
            record[field] = None if value is None or math.isnan(value) else float(value)
    needs: list[Need] = []
    if adaptive.until == "effects":
        open_count = len(open_effects)
        if open_count:
            reason = "main effect open: " + ", ".join(
                f"{r['axis']} {r['value']} vs {r['baseline_value']}"
                for _, r in open_effects.iterrows()
            )
            needs = [Need(trials_of.get(key(row), []), reason) for _, row in summary.iterrows()]
    else:
        open_rows = [row for _, row in rows.iterrows() if still_open(row)]
        open_count = len(open_rows)
        for row in open_rows:
            needs.append(Need(trials_of.get(key(row), []), f"{name(row)} vs baseline"))
        bases = summary[summary["verdict"] == "baseline"]
        for _, base in bases.iterrows():
            waiting = [r for r in open_rows if all(str(r[t]) == str(base[t]) for t in tasks)]
            if waiting:
                scope = f" on {base[tasks[0]]}" if tasks else ""
                needs.append(
                    Need(
                        trials_of.get(key(base), []),
                        f"baseline ({label(report.baseline, [k for k in keys if not is_stratum(k)])}{scope}) "
                        f"of {len(waiting)} open comparison(s)",
                    )
                )
    decided = sum(1 for record in table if record["verdict"] in ("better", "worse", "equivalent"))
    return Judgement(needs, open_count, decided, table)
