"""Statistics of an ablation: group runs by the axes that vary, aggregate over seeds, and
compare every group with a baseline over seed-paired runs.

Input: one row per finished training run, with ``params.<key>`` columns (the flattened
config), ``metrics.<key>`` columns and ``wall_time_s``. Pure numpy, pandas and scipy (and the
config's rules of which keys matter): no MLflow and no torch here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from latentseg.config import inert_keys

SEED = "params.train.seed"
# Params that never define a variant: the seed pairs runs, the rest only say how it ran.
NOT_AXES = {
    SEED,
    "params.train.threads",
    "params.train.device",
    "params.model.attention_impl",
    # filled from the dataset: they follow the data.dataset axis, they are not one themselves
    "params.model.num_classes",
    "params.model.in_channels",
}
CONFIDENCE = 0.95
# Axes that change the task, not the model: runs are compared only within one value of them
# (a variant on digits is paired with the baseline on digits, same seed).
STRATA = ("params.data.dataset",)


def pairing(runs: pd.DataFrame, axes: Sequence[str]) -> pd.Series:
    """The key that pairs runs: the seed, within each task (dataset) when the task varies."""
    key = runs[SEED].map(str)
    for column in STRATA:
        if column in axes:
            key = runs[column].map(str) + "|" + key
    return key


def is_stratum(axis: str) -> bool:
    """``data.dataset`` or ``params.data.dataset``: a task, not a variant."""
    return "params." + axis.removeprefix("params.") in STRATA


NOT_APPLICABLE = "n/a"


def mark_inert(runs: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """Runs whose model ignores some params (e.g. ``num_latents`` without expert attention)
    get ``n/a`` there, so that runs of one model with one seed look the same (and
    :func:`deduplicate` counts them once). Returns the runs and a note naming those keys."""
    model_columns = [c for c in runs.columns if c.startswith("params.model.")]
    if not model_columns:
        return runs, None
    runs = runs.copy()
    names: set[str] = set()
    # the keys a model ignores depend on its config alone: decided once per distinct config
    model = runs[model_columns]
    groups = model.map(str).groupby(model_columns, sort=False, dropna=False).indices
    for positions in groups.values():
        row = model.iloc[positions[0]]
        config = {c.removeprefix("params.model."): row[c] for c in model_columns}
        for key in inert_keys(config):
            column = f"params.model.{key}"
            if column in runs and str(row[column]) != NOT_APPLICABLE:
                runs.iloc[positions, runs.columns.get_loc(column)] = NOT_APPLICABLE
                names.add(key)
    if not names:
        return runs, None
    return runs, (
        f"Some params do not change the model given the others ({', '.join(sorted(names))}; "
        "e.g. num_latents without expert attention, MoE without a latent MLP): those runs "
        "show n/a there."
    )


def identity_columns(runs: pd.DataFrame) -> list[str]:
    """The params that identify a configuration and seed (not tracking, threads, device)."""
    return [
        c for c in runs.columns
        if c.startswith("params.") and not c.startswith("params.tracking.") and c not in NOT_AXES - {SEED}
    ]  # fmt: skip


def deduplicate(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One run per configuration and seed: re-runs, retried trials and replicates of one
    model under params it ignores (after :func:`mark_inert`) count once, the latest kept.
    Returns the runs and how many were merged away."""
    identity = identity_columns(runs)
    if not identity or runs.empty:
        return runs, 0
    if "end_time" in runs:
        runs = runs.sort_values("end_time", ascending=False, kind="stable")
    kept = runs[~runs[identity].map(str).duplicated()]
    return kept.sort_index().reset_index(drop=True), len(runs) - len(kept)


def metric_bounds(metric: str) -> tuple[float, float]:
    """The range a metric lives in: [0, 1] for IoU, Dice and accuracies; >= 0 for losses,
    counts and entropies; unbounded otherwise. Intervals are clipped to it."""
    name = metric.removeprefix("best_").removeprefix("val_").removeprefix("test_")
    if name in ("miou", "mdice", "pixel_accuracy") or name.startswith(("iou_", "dice_")):
        return 0.0, 1.0
    if "loss" in name or name in ("dead_latents", "latent_usage_entropy", "router_entropy"):
        return 0.0, math.inf
    return -math.inf, math.inf


def difference_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    """The range of a difference of two values in ``bounds``."""
    low, high = bounds
    return low - high, high - low


def ablation_axes(runs: pd.DataFrame) -> list[str]:
    """The ``params.*`` columns whose values differ between runs (tracking keys excluded;
    a column that is only ``n/a`` beside a single value is not an axis)."""
    axes = []
    for column in runs.columns:
        if (
            not column.startswith("params.")
            or column in NOT_AXES
            or column.startswith("params.tracking.")
        ):
            continue
        values = set(runs[column].map(str)) - {NOT_APPLICABLE}
        if len(values) > 1:  # n/a beside one value: a key some runs ignore, not an axis
            axes.append(column)
    return sorted(axes)  # a stable order, whatever order the store returns columns in


def mean_ci(
    values: Sequence[float],
    confidence: float = CONFIDENCE,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[float, float, float, float]:
    """``(mean, std, low, high)``: a Student-t interval clipped to ``bounds`` (a mean of
    values in [0, 1] lies in [0, 1]); NaN bounds with fewer than 2 values."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(special.stdtrit(len(x) - 1, 0.5 + confidence / 2)) * std / math.sqrt(len(x))
    return mean, std, max(mean - half, bounds[0]), min(mean + half, bounds[1])


def summarize(
    runs: pd.DataFrame,
    axes: Sequence[str],
    metric: str,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> pd.DataFrame:
    """One row per variant (a combination of axis values): n (runs with a value of
    ``metric``), mean, std and 95% CI of ``metric`` (clipped to ``bounds``), mean best
    epoch, wall time, params, FLOPs and throughput."""
    column = f"metrics.{metric}"
    if column not in runs:
        raise KeyError(f"no run reports metric {metric!r}")
    extra = {
        "best_epoch": "metrics.best_epoch",
        "wall_time_s": "wall_time_s",
        "params": "metrics.model_params",
        "flops_per_image": "metrics.model_flops_per_image",
        "train_images_per_s": "metrics.train_images_per_s",
    }
    rows = []
    groups = runs.groupby(list(axes), dropna=False, sort=True) if axes else [((), runs)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        mean, std, low, high = mean_ci(group[column].tolist(), bounds=bounds)
        row: dict[str, Any] = {a.removeprefix("params."): v for a, v in zip(axes, key, strict=True)}
        row.update(n=int(group[column].notna().sum()), mean=mean, std=std, ci_low=low, ci_high=high)
        for name, source in extra.items():
            row[name] = float(group[source].mean()) if source in group else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def baseline_mask(
    runs: pd.DataFrame, axes: Sequence[str], baseline: Mapping[str, Any]
) -> np.ndarray:
    """The runs of the baseline variant (on every dataset when the dataset varies)."""
    keys = [a.removeprefix("params.") for a in axes if not is_stratum(a)]
    if not keys:
        return np.ones(len(runs), bool)
    return np.logical_and.reduce([runs[f"params.{k}"].map(str) == str(baseline[k]) for k in keys])


def compare(
    runs: pd.DataFrame,
    axes: Sequence[str],
    metric: str,
    baseline: Mapping[str, Any],
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> pd.DataFrame:
    """Every variant against ``baseline`` (axis -> value, axes without ``params.``), over runs
    paired by seed (within a dataset). Per variant: ``n_pairs`` (pairs with a value on both
    sides), the mean difference ``diff`` with its standard error ``se``, ``df`` and the
    per-comparison 95% interval ``diff_ci95_low/high`` (unadjusted), the paired t-test's
    unadjusted ``p``, Hedges' ``hedges_g``, ``sd_diff``, ``corr`` (the two sides' correlation
    across seeds, :func:`correlation`) and the Wilcoxon signed-rank p where
    it can reject at 5% (6 pairs or more; NaN below). Verdicts need the whole family:
    :func:`apply_verdicts`."""
    column = f"metrics.{metric}"
    keys = [a.removeprefix("params.") for a in axes]
    variant_keys = [k for k in keys if not is_stratum(k)]  # the baseline on every task
    runs = runs.assign(_pair=pairing(runs, axes))
    base = runs[baseline_mask(runs, axes, baseline)].groupby("_pair")[column].mean().dropna()
    diff_bounds = difference_bounds(bounds)
    rows = []
    for key, group in runs.groupby(list(axes), dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        values = group.groupby("_pair")[column].mean().dropna()
        seeds = sorted(set(values.index) & set(base.index))
        diffs = np.array([values[s] - base[s] for s in seeds], dtype=float)
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        row["is_baseline"] = all(str(row[k]) == str(baseline[k]) for k in variant_keys)
        row.update(_paired(diffs, diff_bounds))
        row["corr"] = (
            math.nan
            if row["is_baseline"]
            else correlation([values[s] for s in seeds], [base[s] for s in seeds])
        )
        row[TEST_KEY] = test_key(seeds, diffs)
        rows.append(row)
    return pd.DataFrame(rows)


def correlation(variant: Sequence[float], baseline: Sequence[float]) -> float:
    """Pearson's r of a variant's and the baseline's scores over their paired seeds (NaN
    below 3 pairs or without spread): how much of the seed noise the pairing cancels, since
    ``var(diff) = var(a) + var(b) - 2 r sd(a) sd(b)``. Common random numbers (shared initial
    weights, data order and augmentation) raise it."""
    a, b = np.asarray(variant, dtype=float), np.asarray(baseline, dtype=float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


# A comparison's test, as the pairs it is made of (block and difference): two rows with the
# same key are one test (a main effect of the only crossed axis is its variant comparison),
# which the family holds once.
TEST_KEY = "_test"


def test_key(blocks: Sequence[str], diffs: np.ndarray) -> str:
    return ";".join(f"{b}:{d:.12g}" for b, d in sorted(zip(blocks, diffs.tolist(), strict=True)))


def _paired(diffs: np.ndarray, bounds: tuple[float, float]) -> dict[str, Any]:
    from latentseg.report.verdicts import hedges_g, wilcoxon_can_reject

    n = len(diffs)
    mean, sd, low, high = mean_ci(diffs.tolist(), bounds=bounds)
    se = sd / math.sqrt(n) if n >= 2 else math.nan
    exact = n >= 2 and np.allclose(diffs, diffs[0])  # no spread: no test
    return {
        "n_pairs": n,
        "diff": mean,
        "se": math.nan if exact else se,
        "df": float(n - 1) if n >= 2 else math.nan,
        "sd_diff": sd,
        "diff_ci95_low": low,
        "diff_ci95_high": high,
        "p": math.nan if exact or n < 2 else float(2 * special.stdtr(n - 1, -abs(mean / se))),
        "hedges_g": hedges_g(diffs),
        "wilcoxon_p": float(stats.wilcoxon(diffs).pvalue)
        if wilcoxon_can_reject(n) and not np.all(diffs == 0)
        else math.nan,
    }


@dataclass(frozen=True)
class Family:
    """How one report decides: every comparison it makes is one family."""

    sesoi: float  # the smallest effect of interest (NaN: equivalence is never claimed)
    alpha: float
    method: str  # holm | bonferroni | bh
    size: int  # comparisons that could be tested
    level: float  # the confidence level of every adjusted interval (the last look's)
    # Adaptive seeds: seeds per point at each planned look, the error rate spent at each,
    # and the looks taken so far (empty for a fixed design: one look at ``alpha``).
    looks: tuple[int, ...] = ()
    spent: tuple[float, ...] = ()
    taken: int = 1

    def describe(self, metric: str) -> str:
        from latentseg.report.verdicts import METHODS

        sesoi = (
            f"smallest effect of interest ±{self.sesoi:g} {metric}"
            if not math.isnan(self.sesoi)
            else "no smallest effect of interest (give --sesoi to decide equivalence)"
        )
        if self.size == 0:
            return (
                "no comparison could be tested: each needs 2 or more seed pairs that differ; "
                f"every verdict is inconclusive; {sesoi}"
            )
        family = f"{self.size} comparison{'s form' if self.size != 1 else ' forms'} one family"
        if self.method == "bh":
            intervals = (
                "false-coverage-rate intervals (Benjamini & Yekutieli): on average at most "
                f"{self.alpha:g} of the better/worse intervals miss; not simultaneous, so "
                "equivalent verdicts are exploratory"
            )
        else:
            intervals = (
                "simultaneous intervals (Bonferroni): all of them cover their true "
                f"differences together in at least {100 * (1 - self.alpha):g}% of studies"
            )
        if self.looks:
            spent = ", ".join(f"{a:.4f}" for a in self.spent)
            seeds = ", ".join(map(str, self.looks))
            return (
                f"{family}, decided after each round of seeds ({self.taken} of {len(self.looks)} "
                f"planned looks, at {seeds} seeds); {METHODS[self.method]} decides better/worse "
                f"at each look, alpha {self.alpha:g} spent over the looks ({spent}; union "
                "bound); each interval at the level of the look that decided it (column "
                f"ci_level): repeated {intervals}, over every look; {sesoi}"
            )
        return (
            f"{family}; {METHODS[self.method]} decides better/worse at alpha {self.alpha:g}; "
            f"intervals at {100 * self.level:.2f}%, {intervals}; {sesoi}"
        )


BASELINE_CELLS = {
    "verdict": "baseline", "direction": "", "relevant": False, "counted_once": False,
    "exploratory": False,
}  # fmt: skip


def apply_verdicts(
    tables: Sequence[pd.DataFrame],
    *,
    sesoi: float,
    alpha: float,
    method: str,
    bounds: tuple[float, float],
    planning_alpha: float | None = None,
) -> tuple[list[pd.DataFrame], Family]:
    """Decide every non-baseline row of ``tables`` (frames of :func:`compare` and
    :func:`axis_effects`) as one family. Adds ``verdict``, ``direction`` (the sign the test
    decided, also for a negligible ``equivalent`` difference), ``relevant`` (the whole
    interval beyond the SESOI), ``p_adjusted``, ``diff_ci_low`` and ``diff_ci_high`` (the
    family's interval), ``ci_level``, ``mde`` (the minimal detectable effect at 80% power),
    ``seeds_needed`` (seed pairs for 80% power at the SESOI) and ``seeds_equivalence``
    (seed pairs to show equivalence with 80% chance when the true difference is 0), the last
    three at ``planning_alpha / m`` (the last planned look's share with adaptive seeds;
    ``alpha`` by default).

    A row whose test (its blocks and differences, column ``_test``) repeats an earlier row's
    is the same test: the family holds it once (``counted_once`` marks the repeat, which
    takes the first row's verdict). A row with ``stale`` true got no new pairs at this look
    of an adaptive study: it stays in the family with p = 1 and is not decided; one with
    ``rejected_before`` true had its sign decided at an earlier look, which stands (it counts
    as rejected in Holm's steps)."""
    from latentseg.report.verdicts import decide, mde, seeds_for_equivalence, seeds_needed

    parts = []
    for index, table in enumerate(tables):
        if table.empty:
            continue
        compared = ~table["is_baseline"].astype(bool) if "is_baseline" in table else None
        rows = table.index[compared] if compared is not None else table.index
        parts.append((index, rows))

    def column(name: str, default) -> np.ndarray:
        return np.concatenate(
            [
                tables[i].loc[r, name].to_numpy() if name in tables[i] else np.full(len(r), default)
                for i, r in parts
            ]
            or [np.array([], dtype=type(default))]
        )

    estimate, se, df = (column(c, math.nan).astype(float) for c in ("diff", "se", "df"))
    n = column("n_pairs", 0).astype(float)
    stale = column("stale", False).astype(bool)
    rejected_before = column("rejected_before", False).astype(bool)
    keys = column(TEST_KEY, "")
    first = {}
    repeat = np.zeros(len(keys), dtype=int) - 1  # index of the first row of the same test
    for i, key in enumerate(keys):
        if key and key in first:
            repeat[i] = first[key]
        elif key:
            first[key] = i
    once = repeat < 0
    decided = decide(
        estimate[once], se[once], df[once], sesoi=sesoi, alpha=alpha, method=method,
        bounds=difference_bounds(bounds), stale=stale[once],
        rejected_before=rejected_before[once],
    )  # fmt: skip
    source = np.cumsum(once) - 1  # each row's place among the rows tested once
    source[~once] = source[repeat[~once]]
    planning = (alpha if planning_alpha is None else planning_alpha) / max(decided.family_size, 1)
    values = {
        "verdict": decided.verdict[source],
        "direction": decided.direction[source],
        "relevant": decided.relevant[source],
        "p_adjusted": decided.p_adjusted[source],
        "diff_ci_low": decided.ci_low[source],
        "diff_ci_high": decided.ci_high[source],
        "ci_level": np.full(len(source), decided.level),
        "counted_once": ~once,
        # bh's intervals are not simultaneous: equivalence drawn from them is exploratory
        "exploratory": (decided.verdict[source] == "equivalent") & (method == "bh"),
        "mde": np.array([mde(a, b, planning) for a, b in zip(se, df, strict=True)]),
        "seeds_needed": np.array(
            [
                seeds_needed(a * math.sqrt(k), sesoi, planning) if k > 0 else math.nan
                for a, k in zip(se, n, strict=True)
            ]
        ),
        "seeds_equivalence": np.array(
            [
                seeds_for_equivalence(a * math.sqrt(k), sesoi, planning) if k > 0 else math.nan
                for a, k in zip(se, n, strict=True)
            ]
        ),
    }
    out = [table.copy() for table in tables]
    start = 0
    for index, rows in parts:
        stop = start + len(rows)
        table = out[index]
        for name, array in values.items():
            table[name] = BASELINE_CELLS.get(name, math.nan)  # the baseline's own row
            if array.dtype == object:
                table[name] = table[name].astype(object)
            table.loc[rows, name] = array[start:stop]
        start = stop
    return out, Family(sesoi, alpha, method, decided.family_size, decided.level)
