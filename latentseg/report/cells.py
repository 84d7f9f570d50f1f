"""How the report reads: each value's cell (``+0.0123``, ``x1.05``, ``equivalent (slightly
worse)``), each table's rows as text and the sentences around them. Shared by the Markdown,
HTML and terminal writers, the findings and the notes; the rows and their order come from
:mod:`latentseg.report.tables`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from latentseg.report.labels import change, label, on_dataset
from latentseg.report.stats import is_stratum

if TYPE_CHECKING:
    from latentseg.report.tables import Report, Tables


def fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, (float, np.floating)):
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def signed(value: float, digits: int = 4) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def interval(row, low="diff_ci_low", high="diff_ci_high") -> str:
    return f"{signed(row.get('diff', math.nan))} [{signed(row.get(low, math.nan))}, {signed(row.get(high, math.nan))}]"


def ratio_cell(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"x{value:.2f}"


def seeds_cell(value: float) -> str:
    if value is None or math.isnan(value):
        return "–"
    return "> 1000" if math.isinf(value) else str(int(value))


def seeds_pair(row) -> str:
    """``6 / 14``: seed pairs to detect a difference of SESOI, and to show equivalence."""
    return (
        f"{seeds_cell(row.get('seeds_needed', math.nan))} / "
        f"{seeds_cell(row.get('seeds_equivalence', math.nan))}"
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


def round_cell(row) -> str:
    """The round whose look decided a comparison ('–' while it is open)."""
    value = row.get("decided_round", math.nan)
    return "–" if value is None or pd.isna(value) or int(value) == 0 else str(int(value))


Section = tuple[str, str, list[str], list[list[str]]]  # title, id, header, rows
SEEDS_HEAD = "seeds: detect / equivalence"


def sections(report: Report, built: Tables) -> list[Section]:
    """The report's tables as text, in order: (title, id, header, rows); what the Markdown
    and HTML writers show."""
    shown = [_verdicts_section(report, built)]
    if built.rounds:
        shown.append(_rounds_section(built))
    if not built.effects.empty:
        shown.append(_effects_section(built))
    if not built.interactions.empty:
        shown.append(_interactions_section(built))
    if not built.front.empty:
        shown.append(_front_section(report, built))
    if not built.noise.empty:
        shown.append(_noise_section(report, built))
    shown.append(_details_section(report, built))
    return shown


def _front_section(report: Report, built: Tables) -> Section:
    """Each point's membership of the Pareto front, with its objectives' values."""
    keys = report.axes
    tasks = [k for k in keys if is_stratum(k)]
    objectives = report.front_objectives
    head = [*(["dataset"] if tasks else []), "point", "membership", "seeds"]
    head += [f"{o.metric} ({o.direction})" for o in objectives] + ["dominated by"]
    rows = [
        [*([str(row[tasks[0]])] if tasks else []), label(row, keys, tuple(tasks)),
         str(row["membership"]), str(int(row["n"])),
         *(objective_cell(row, o.metric) for o in objectives), row["dominated_by"] or "–"]
        for _, row in built.front.iterrows()
    ]  # fmt: skip
    return "Pareto front", "front", head, rows


def front_lines(report: Report) -> list[str]:
    """The front as terminal lines: its rule, then one line per point."""
    from latentseg.report.tables import tables

    built = tables(report)
    if built.front.empty:
        return []
    family = report.front_family
    names = ", ".join(f"{o.metric} ({o.direction})" for o in report.front_objectives)
    fixed = f"; no interval for {', '.join(family['fixed'])} (fixed)" if family["fixed"] else ""
    margins = ", ".join(
        f"{o.metric} {math.expm1(o.margin):.0%}" if o.is_cost else f"{o.metric} ±{o.margin:g}"
        for o in report.front_objectives
        if o.margin > 0
    )
    lines = [
        f"Pareto front over {names} (differences within {margins or 'none'} do not count): "
        f"{family['intervals']} intervals at {family['level']:.2%}, "
        f"all membership claims right together in >= {1 - family['alpha']:.0%} of reports{fixed}"
    ]
    _, _, head, rows = _front_section(report, built)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    for cells in [head, *rows]:
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        )
    return lines


def objective_cell(row, metric: str) -> str:
    """``0.8012 [0.7950, 0.8074]`` for a noisy objective (95% over seeds), ``12,345`` for a
    count such as parameters, else the value."""
    value = row[metric]
    if f"{metric}_ci_low" in row and not pd.isna(row[f"{metric}_ci_low"]):
        return f"{fmt(value)} [{fmt(row[f'{metric}_ci_low'])}, {fmt(row[f'{metric}_ci_high'])}]"
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and abs(value) >= 100:
        return f"{value:,.0f}"
    return fmt(value)


def _noise_section(report: Report, built: Tables) -> Section:
    """Where each comparison's noise comes from: training randomness or the test set."""
    keys = report.axes
    head = ["change from the baseline", "pairs", "test images", "SD of diff per seed"]
    head += ["test set's share", "SE of diff", "SE, 4x seeds", "SE, 4x test images"]
    rows = [
        [change(row, keys, report.baseline) + on_dataset(row, keys), str(int(row["n_pairs"])),
         str(int(row["test_images"])), fmt(row["sd_diff"]), percent(row["test_share"]),
         fmt(row["se"]), fmt(row["se_4x_seeds"]), fmt(row["se_4x_test_images"])]
        for _, row in built.noise.iterrows()
    ]  # fmt: skip
    return "Where the noise comes from", "noise", head, rows


def percent(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.0%}"


def _verdicts_section(report: Report, built: Tables) -> Section:
    """Each variant against the baseline, by dataset, decided verdicts first."""
    keys = report.axes
    tasks = [k for k in keys if is_stratum(k)]
    adaptive = bool(built.rounds)
    head = [*(["dataset"] if tasks else []), "change from the baseline", "verdict"]
    head += [*(["round"] if adaptive else []), "difference [adjusted CI]"]
    head += ["adjusted p", "pairs", "MDE", SEEDS_HEAD, "FLOPs", "time/img"]
    rows = []
    for _, row in built.verdicts.iterrows():
        base = row["verdict"] == "baseline"
        rows.append(
            [*([str(row[tasks[0]])] if tasks else []),
             "(baseline)" if base else change(row, keys, report.baseline),
             verdict_cell(row),
             *([round_cell(row)] if adaptive else []),
             "–" if base else interval(row),
             "–" if base else fmt(row.get("p_adjusted", math.nan), 3),
             str(int(row.get("n_pairs", row["n"]) or 0)),
             "–" if base else fmt(row.get("mde", math.nan)),
             "–" if base else seeds_pair(row),
             "–" if base else ratio_cell(row.get("flops_ratio", math.nan)),
             "–" if base else ratio_cell(row.get("time_ratio", math.nan))]
        )  # fmt: skip
    return "Verdicts", "verdicts", head, rows


def _rounds_section(built: Tables) -> Section:
    """Adaptive seeds: what each look spent and decided."""
    rows = [
        [str(r["round"]), str(r["seeds"]), f"{r['alpha']:.4f}", str(r["decided"]), str(r["open"])]
        for r in built.rounds
    ]
    head = ["round", "seeds per open point", "alpha spent", "decided so far", "inconclusive"]
    return "Rounds of seeds", "rounds", head, rows


def _effects_section(built: Tables) -> Section:
    """Each main effect, decided verdicts first."""
    rows = [
        [str(r["axis"]), f"{r['value']} vs {r['baseline_value']}",
         "all" if r["scope"] == "all" else str(r["scope"]), verdict_cell(r), interval(r),
         fmt(r["p_adjusted"], 3), str(int(r["n_pairs"])), str(r.get("contexts", "–")),
         fmt(r["mde"]), seeds_pair(r), ratio_cell(r["flops_ratio"]),
         ratio_cell(r["time_ratio"])]
        for _, r in built.effects.iterrows()
    ]  # fmt: skip
    head = ["axis", "change", "datasets", "verdict", "difference [adjusted CI]"]
    head += ["adjusted p", "seed blocks", "contexts", "MDE", SEEDS_HEAD, "FLOPs", "time/img"]
    return "Main effects", "effects", head, rows


def _interactions_section(built: Tables) -> Section:
    """Each two-way interaction, with its contrast when it has one."""
    rows = []
    for _, r in built.interactions.iterrows():
        contrast = (
            f"{signed(r['contrast'])} [{signed(r['contrast_ci95_low'])}, {signed(r['contrast_ci95_high'])}]"
            if "contrast" in r and not pd.isna(r.get("contrast"))
            else "–"
        )
        rows.append(
            [f"{r['axis_a']} x {r['axis_b']}", str(r["levels"]), fmt(r["F"], 2),
             f"{fmt(r['df_num'], 0)}, {fmt(r['df_den'], 0)}", str(int(r["n_blocks"])), fmt(r["p"], 3),
             fmt(r["p_adjusted"], 3), contrast]
        )  # fmt: skip
    head = ["axes", "levels", "F", "df", "seed blocks", "p", "Holm p", "interaction [95% CI]"]
    return "Interactions", "interactions", head, rows


def _details_section(report: Report, built: Tables) -> Section:
    """Every variant, best first, with its unadjusted statistics and costs."""
    keys, show_values = report.axes, built.seed_values
    head = [*keys, "n", "mean", "95% CI", *(["per seed"] if show_values else [])]
    head += ["mean / baseline's, paired seeds"]
    head += ["diff", "95% CI of diff (unadjusted)", "p (unadjusted)", "Hedges g"]
    head += ["Wilcoxon p", "r with baseline", "params", "GFLOP/img", "wall s"]
    rows = []
    for _, row in built.details.iterrows():
        rows.append(
            [*(str(row[k]) for k in keys), str(int(row["n"])), fmt(row["mean"]),
             f"[{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]",
             *([str(row["seed_values"])] if show_values else []),
             f"{fmt(row.get('mean_paired', math.nan))} / {fmt(row.get('baseline_mean_paired', math.nan))}",
             signed(row.get("diff", math.nan)),
             f"[{signed(row.get('diff_ci95_low', math.nan))}, {signed(row.get('diff_ci95_high', math.nan))}]",
             fmt(row.get("p", math.nan), 3), fmt(row.get("hedges_g", math.nan), 2),
             fmt(row.get("wilcoxon_p", math.nan), 3), fmt(row.get("corr", math.nan), 2),
             fmt(row["params"], 0),
             fmt(row["flops_per_image"] / 1e9, 3), fmt(row["wall_time_s"], 0)]
        )  # fmt: skip
    return "Details per variant", "summary", head, rows


def lead(report: Report, built: Tables) -> list[str]:
    """The sentences above the verdict table: metric, baseline, decision rule, counts."""
    base = label(report.baseline, [k for k in report.axes if not is_stratum(k)])
    lines = [
        f"Metric: {report.metric}, the test split at each run's best-validation checkpoint "
        "(validation picks the epoch, test scores it).",
        f"Baseline: {base} ({report.baseline_reason}).",
    ]
    if report.family is not None:
        lines.append("Decision rule: " + report.family.describe(report.metric) + ".")
        shown = [f"{n} {verdict}" for verdict, n in built.verdict_counts.items()]
        lines.append("Verdicts (variants and main effects): " + ", ".join(shown) + ".")
    lines += [f"**Warning:** {w}" for w in report.warnings]
    return lines


def method(report: Report) -> str:
    """How to read the report: what each verdict, column and interval means."""
    family = report.family
    sesoi = fmt(family.sesoi, 4) if family else "–"
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
        "at 5%; r with baseline: the correlation of the variant's and the baseline's scores "
        "across seeds, from 3 pairs: the closer to 1, the more of the seed noise the pairing "
        "cancels, which shared initial weights and data order between variants raise). Where "
        "the noise comes from (runs that log their test images' scores): each seed's "
        "difference, resampled over the test images (a bootstrap, the same images for every "
        "run), splits into the test set's error, part of which all seeds share, and the "
        "training randomness beyond it (initial weights, data order, augmentation); the SE "
        "of the difference and what 4x the seeds or 4x the test images would make of it. "
        "More seeds do not cut the shared part: the verdicts hold for this test set."
    )
