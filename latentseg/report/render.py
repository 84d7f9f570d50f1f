"""The report's analysis: the baseline, the verdicts of every comparison and main effect,
the interactions, the findings and the figures, into a :class:`~latentseg.report.tables.Report`
(:func:`build`). The documents are written by :mod:`latentseg.report.writers`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latentseg.config import ModelConfig
from latentseg.errors import ConfigError
from latentseg.report.cells import fmt, signed, verdict_cell
from latentseg.report.collect import Collected, scored_runs
from latentseg.report.decision import Decision, run_metric
from latentseg.report.effects import axis_effects, interactions
from latentseg.report.front import front_findings
from latentseg.report.labels import change, effect_label, on_dataset, variant_names
from latentseg.report.notes import _count_failures, _effect_notes, _notes, _warnings
from latentseg.report.rounds import complete_blocks, effect_runs, run_rounds, sequential
from latentseg.report.stats import (
    NOT_APPLICABLE,
    TEST_KEY,
    ablation_axes,
    apply_verdicts,
    compare,
    is_stratum,
    metric_bounds,
    summarize,
)
from latentseg.report.tables import SEED_VALUES_UP_TO, Report, tables
from latentseg.report.variance import noise_table
from latentseg.report.writers import markdown
from latentseg.tracking.logged import PLOT_KEYS
from latentseg.tracking.store import TrackingStore

__all__ = ["Report", "build", "choose_baseline"]


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
    scored = scored_runs(collected, name, metric)
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
    report.warnings = _warnings(report, runs, axes, decision, run_metric(decision.primary))
    report.notes = _notes(collected, scored) + _effect_notes(report, decision)
    if axes:
        _front(report, runs, axes, decision)
    if axes and (store or client) is not None:
        report.variance, unscored = noise_table(
            runs, axes, chosen, column, TrackingStore.of(store or client)
        )
        if unscored:
            report.notes.append(
                f"{unscored} compared run(s) logged no per-image test scores (runs of a "
                "latentseg before 2026-12-07): where the noise comes from leaves them out."
            )
    if figures:
        report.figures, report.images = _drawings(report, runs, axes, store or client, collected)
    report.findings = _findings(
        axes, keys, column, report.summary, report.effects, report.front, report.front_objectives
    )
    shown = [*report.figures, *report.images]
    report.markdown = markdown(report, tables(report), shown)
    return report


def _front(report: Report, runs: pd.DataFrame, axes: list[str], decision: Decision) -> None:
    """Each point's membership of the Pareto front (:mod:`latentseg.report.front`), into
    ``report``. Objectives asked for with ``--front`` that runs do not log exit 2; a study's
    own or the default ones (the metric against parameters) that do not fit these runs
    leave the front out, with a note: the verdicts stand without it."""
    from latentseg.report.front import check_logged, front_table, objectives_for

    try:
        objectives = objectives_for(
            report.metric, decision.resolved_sesoi(report.metric), decision.objectives
        )
        check_logged(runs, objectives)
    except ConfigError as exc:
        if decision.front_asked:
            raise
        if decision.objectives:
            report.notes.append(f"No Pareto front: the study's objectives do not fit ({exc}).")
        return
    report.front, report.front_family = front_table(
        runs, axes, objectives, decision.alpha, max(len(decision.looks), 1)
    )
    report.front_objectives = report.front_family["objectives"]


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
    "hedges_g", "wilcoxon_p", "corr", TEST_KEY,
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
    variant = runs[axes].map(str).agg("|".join, axis=1)
    pairs = pairing(runs, axes)
    base = runs[baseline_mask(runs, axes, baseline)].groupby(pairs)[column].mean()
    # variant x pair means, once; a pair the baseline lacks is not shared
    cells = runs[column].groupby([variant, pairs]).mean().unstack()
    shared = cells.reindex(columns=base.index).notna()
    mine = cells.reindex(columns=base.index).where(shared).mean(axis=1)
    theirs = shared.mul(base, axis=1).where(shared).mean(axis=1)
    names = table[keys].map(str).agg("|".join, axis=1) if keys else pd.Series("", index=table.index)
    mine = mine.reindex(names).to_numpy(float)
    theirs = theirs.reindex(names).to_numpy(float)
    return table.assign(mean_paired=mine, baseline_mean_paired=theirs)


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
    from latentseg.report import plots

    figure = plots.front(
        report.front, report.front_objectives, keys, report.front_family.get("level", 1.0)
    )
    if figure is not None:
        drawn["pareto"] = figure
    if store is None:
        return drawn, {}
    store = TrackingStore.of(store)
    drawn.update(_curves(store, runs, table, axes, keys, column, report.baseline))
    return drawn, _run_images(store, runs, column, collected)


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


def _findings(axes, keys, column, table, effects, report_front, front_objectives) -> list[str]:
    """One sentence per main effect (with its verdict and adjusted interval) and, per
    dataset, the Pareto front's verdicts."""
    lines = []
    for _, row in effects.iterrows():
        prefix = "" if row["scope"] == "all" else f"On {row['scope']}: "
        lines.append(
            f"{prefix}{row['axis']} {row['value']} instead of {row['baseline_value']}: "
            f"**{row['verdict']}**, {column} {signed(row['diff'])} "
            f"[{signed(row['diff_ci_low'])}, {signed(row['diff_ci_high'])}], "
            f"adjusted p {fmt(row['p_adjusted'], 3)}, {int(row['n_pairs'])} seed blocks"
            + _cost(row)
            + "."
        )
    return lines + front_findings(report_front, front_objectives, keys)


def _curves(store: TrackingStore, runs, table, axes, keys, column, baseline) -> dict[str, Any]:
    from latentseg.report import plots

    per_epoch = "val_" + column.removeprefix("test_")  # validation curves: what picked the epoch
    variants = table.sort_values("mean", ascending=False)
    order = list(variant_names(variants.head(MAX_CURVES), keys)) if keys else ["all"]
    base = variant_names(pd.DataFrame([baseline]), keys)
    base = base.iloc[0] if keys else base
    if base not in order:
        order.append(base)
    labelled = runs.assign(variant=variant_names(runs, axes))
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
        for key in PLOT_KEYS:
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
        [change(r, keys, baseline) + on_dataset(r, keys), r["diff"], r["diff_ci_low"],
         r["diff_ci_high"], r["verdict"], verdict_cell(r), "variant"]
        for _, r in variants.iterrows()
    ]  # fmt: skip
    for _, r in effects.iterrows():
        if bool(r.get("counted_once") or False):
            continue
        scope = "" if r["scope"] == "all" else f" (on {r['scope']})"
        name = f"{effect_label(r)}{scope}"
        rows.append(
            [name, r["diff"], r["diff_ci_low"], r["diff_ci_high"], r["verdict"],
             verdict_cell(r), "main effect"]
        )  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
