"""Statistics of an ablation: group runs by the axes that vary, aggregate over seeds, and
compare every group with a baseline over seed-paired runs.

Input: one row per finished training run, with ``params.<key>`` columns (the flattened
config), ``metrics.<key>`` columns and ``wall_time_s``. Pure pandas/scipy: no MLflow here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

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
    get ``n/a`` there, and runs that are then the same configuration with the same seed -
    replicates of one model - are counted once. Returns the runs and a note saying so."""
    from latentseg.models import inert_keys

    model_columns = [c for c in runs.columns if c.startswith("params.model.")]
    if not model_columns:
        return runs, None
    runs = runs.copy()
    masked = np.zeros(len(runs), dtype=bool)
    names: set[str] = set()
    for position, (_, row) in enumerate(runs[model_columns].iterrows()):
        config = {c.removeprefix("params.model."): row[c] for c in model_columns}
        for key in inert_keys(config):
            column = f"params.model.{key}"
            if column in runs and str(row[column]) != NOT_APPLICABLE:
                runs.iloc[position, runs.columns.get_loc(column)] = NOT_APPLICABLE
                masked[position] = True
                names.add(key)
    if not masked.any():
        return runs, None
    identity = [
        c for c in runs.columns
        if c.startswith("params.") and not c.startswith("params.tracking.") and c not in NOT_AXES - {SEED}
    ]  # fmt: skip
    before = len(runs)
    key = runs[identity].map(str).agg("|".join, axis=1)
    runs = runs[~(key.duplicated() & masked)]
    dropped = before - len(runs)
    why = (
        f"Some params do not change the model given the others ({', '.join(sorted(names))}; "
        "e.g. num_latents without expert attention, MoE without a latent MLP)"
    )
    note = (
        f"{why}: those runs show n/a there, and {dropped} replicate run(s) of the same model "
        "and seed are counted once."
        if dropped
        else f"{why}: n/a."
    )
    return runs.reset_index(drop=True), note


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
    return axes


def mean_ci(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float, float]:
    """``(mean, std, low, high)``: a Student-t interval; NaN bounds with fewer than 2 values."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1)) * std / math.sqrt(len(x))
    return mean, std, mean - half, mean + half


def summarize(runs: pd.DataFrame, axes: Sequence[str], metric: str) -> pd.DataFrame:
    """One row per variant (a combination of axis values): n, mean, std and 95% CI of
    ``metric``, mean best epoch, wall time, params, FLOPs and throughput."""
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
        mean, std, low, high = mean_ci(group[column].tolist())
        row: dict[str, Any] = {a.removeprefix("params."): v for a, v in zip(axes, key, strict=True)}
        row.update(n=len(group), mean=mean, std=std, ci_low=low, ci_high=high)
        for name, source in extra.items():
            row[name] = float(group[source].mean()) if source in group else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def compare(
    runs: pd.DataFrame, axes: Sequence[str], metric: str, baseline: Mapping[str, Any]
) -> pd.DataFrame:
    """Every variant against ``baseline`` (axis -> value, axes without ``params.``), over runs
    paired by seed: mean difference with a 95% CI, paired t-test and Wilcoxon signed-rank
    p-values, effect size d_z (mean difference / std of the differences), and
    ``within_noise`` when the CI of the difference includes 0 (or cannot be computed)."""
    column = f"metrics.{metric}"
    keys = [a.removeprefix("params.") for a in axes]
    variant_keys = [k for k in keys if not is_stratum(k)]  # the baseline on every task
    is_base = (
        np.logical_and.reduce(
            [runs[f"params.{k}"].map(str) == str(baseline[k]) for k in variant_keys]
        )
        if variant_keys
        else np.ones(len(runs), bool)
    )
    runs = runs.assign(_pair=pairing(runs, axes))
    base = runs[is_base].groupby("_pair")[column].mean()
    rows = []
    for key, group in runs.groupby(list(axes), dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        values = group.groupby("_pair")[column].mean()
        seeds = sorted(set(values.index) & set(base.index))
        diffs = np.array([values[s] - base[s] for s in seeds], dtype=float)
        mean, std, low, high = mean_ci(diffs.tolist())
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        row["is_baseline"] = all(str(row[k]) == str(baseline[k]) for k in variant_keys)
        row.update(n_pairs=len(seeds), diff=mean, diff_ci_low=low, diff_ci_high=high)
        row["t_test_p"] = _paired_t(diffs)
        row["wilcoxon_p"] = _wilcoxon(diffs)
        row["effect_size_dz"] = mean / std if std and not math.isnan(std) and std > 0 else math.nan
        row["within_noise"] = bool(math.isnan(low) or (low <= 0 <= high))
        rows.append(row)
    return pd.DataFrame(rows)


def _paired_t(diffs: np.ndarray) -> float:
    if len(diffs) < 2 or np.allclose(diffs, diffs[0]):
        return math.nan
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def _wilcoxon(diffs: np.ndarray) -> float:
    if len(diffs) < 2 or np.all(diffs == 0):
        return math.nan
    return float(stats.wilcoxon(diffs).pvalue)


def axis_effects(
    runs: pd.DataFrame, axes: Sequence[str], metric: str, baseline: Mapping[str, Any]
) -> pd.DataFrame:
    """The main effect of each axis: for every other value of the axis, the seed-paired
    difference from the baseline's value, each side averaged over all the other axes (pairs
    are formed within a dataset when the dataset varies; it is not an effect itself).

    Where the baseline does not use an axis (``n/a``: MoE without a latent MLP), the axis is
    measured where it applies, against the tutorial's value of it. With the cost of the
    change: ``flops_ratio`` and ``time_ratio`` (training seconds per image), other / base."""
    from latentseg.config import ModelConfig

    column = f"metrics.{metric}"
    rows = []
    runs = runs.assign(_pair=pairing(runs, axes))
    defaults = ModelConfig()
    for axis in axes:
        key = axis.removeprefix("params.")
        values = runs[axis].map(str)
        if is_stratum(axis):
            continue
        reference = str(baseline[key])
        if reference == NOT_APPLICABLE:
            default = getattr(defaults, key.removeprefix("model."), NOT_APPLICABLE)
            if not key.startswith("model.") or str(default) not in set(values):
                continue
            reference = str(default)
        base_runs = runs[values == reference]
        base = base_runs.groupby("_pair")[column].mean()
        # an axis's effect is measured where it applies (num_latents: with expert attention)
        for value in sorted(set(values) - {reference, NOT_APPLICABLE}):
            other_runs = runs[values == value]
            other = other_runs.groupby("_pair")[column].mean()
            seeds = sorted(set(base.index) & set(other.index))
            diffs = [other[s] - base[s] for s in seeds]
            mean, _, low, high = mean_ci(diffs)
            rows.append(
                {
                    "axis": key,
                    "value": value,
                    "baseline_value": reference,
                    "n_pairs": len(seeds),
                    "diff": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "within_noise": bool(math.isnan(low) or low <= 0 <= high),
                    "flops_ratio": _ratio(other_runs, base_runs, "metrics.model_flops_per_image"),
                    "time_ratio": _ratio(
                        base_runs, other_runs, "metrics.train_images_per_s"
                    ),  # seconds per image: the inverse of throughput
                }
            )
    return pd.DataFrame(rows)


def _ratio(top: pd.DataFrame, bottom: pd.DataFrame, column: str) -> float:
    """Mean of ``column`` over ``top`` / over ``bottom`` (NaN when either is missing)."""
    if column not in top or column not in bottom:
        return math.nan
    a, b = top[column].mean(), bottom[column].mean()
    return float(a / b) if b and not (math.isnan(a) or math.isnan(b)) else math.nan
