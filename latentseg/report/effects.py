"""Main effects and interactions of an ablation grid, with the seed as the block: within
each seed, an axis's effect over one set of contexts (the other axes' combinations), then
compared across seeds like paired differences (:func:`latentseg.report.stats.compare`).
Pure numpy, pandas and scipy."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from latentseg.config import ModelConfig
from latentseg.report.stats import (
    NOT_APPLICABLE,
    TEST_KEY,
    _paired,
    difference_bounds,
    is_stratum,
    pairing,
    test_key,
)


def _labels(runs: pd.DataFrame, axes: Sequence[str]) -> dict[str, np.ndarray]:
    """Each axis's values as strings, once (the models below index them many times)."""
    return {a: runs[a].map(str).to_numpy(dtype=str) for a in axes}


def _context(
    labels: dict[str, np.ndarray], mask: np.ndarray, axes: Sequence[str], exclude: Sequence[str]
) -> np.ndarray:
    """The combination of the other axes that apply to every run in ``mask``; an axis that
    is n/a for some of them is nested in the compared ones and is averaged over instead."""
    others = [
        a for a in axes
        if a not in exclude and not is_stratum(a) and bool((labels[a][mask] != NOT_APPLICABLE).all())
    ]  # fmt: skip
    if not others:
        return np.full(int(mask.sum()), "all")
    return np.array(["|".join(t) for t in zip(*(labels[a][mask] for a in others), strict=True)])


def _dummies(values: np.ndarray, reference: str | None = None) -> np.ndarray:
    """Treatment-coded indicator columns of ``values`` (the ``reference`` level dropped),
    one per other level in sorted order."""
    levels, inverse = np.unique(values, return_inverse=True)
    reference = reference if reference is not None else levels[0]
    keep = np.flatnonzero(levels != reference)
    return (inverse[:, None] == keep[None, :]).astype(float)


def _estimable(x: np.ndarray, column: int) -> bool:
    """Whether the coefficient of ``column`` is identified by the design ``x``."""
    unit = np.zeros((1, x.shape[1]))
    unit[0, column] = 1.0
    return np.linalg.matrix_rank(np.vstack([x, unit])) == np.linalg.matrix_rank(x)


def axis_effects(
    runs: pd.DataFrame,
    axes: Sequence[str],
    metric: str,
    baseline: Mapping[str, Any],
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> pd.DataFrame:
    """The main effect of each axis, with the seed as a block, in two stages. Within each
    block (the seed, within a dataset: datasets are absorbed, never an effect), the axis's
    effect is the mean over one set of contexts of the difference of the two values' cell
    means (:func:`balanced_effect`); the context is the combination of the other axes that
    apply to all the runs where the axis applies (axes nested in this one, n/a on some runs,
    are averaged within their cell). The block effects are then compared with 0 like
    seed-paired differences (:func:`latentseg.report.stats.compare`): the seed-to-seed
    variation of the effect itself is the error term, so the verdict holds for new seeds,
    not only for the ones run. On a balanced grid it is the balanced main effect; with cells
    missing, ``contexts`` says how many of the grid's it covers (``balanced`` false when not
    all).

    Where the baseline does not use an axis (``n/a``: MoE without a latent MLP), the axis is
    measured where it applies, against the tutorial's value of it. Columns as
    :func:`compare` (``n_pairs``: blocks with both values) and the cost of the change:
    ``flops_ratio`` and ``time_ratio`` (training seconds per image), other / base."""
    column = f"metrics.{metric}"
    runs = runs[runs[column].notna()]
    labels = _labels(runs, axes)
    pairs = pairing(runs, axes).to_numpy(dtype=str)
    outcome = runs[column].to_numpy(float)
    flops, speed = _cost_columns(runs)
    diff_bounds = difference_bounds(bounds)
    rows = []
    for axis in axes:
        reference = None if is_stratum(axis) else _reference_level(axis, baseline, labels[axis])
        if reference is None:
            continue
        # an axis's effect is measured where it applies (num_latents: with expert attention)
        mask = labels[axis] != NOT_APPLICABLE
        level = labels[axis][mask]
        context = _context(labels, mask, axes, [axis])
        for value in sorted(set(level) - {reference}):
            effect = balanced_effect(outcome[mask], pairs[mask], level, value, reference, context)
            rows.append(
                {
                    "axis": axis.removeprefix("params."),
                    "value": value,
                    "baseline_value": reference,
                    **_paired(effect.per_block, diff_bounds),
                    "contexts": f"{effect.used} of {effect.total}",
                    "balanced": effect.used == effect.total,
                    TEST_KEY: test_key(effect.blocks, effect.per_block),
                    **_change_cost(flops[mask], speed[mask], level == value, level == reference),
                }
            )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class BlockEffect:
    """One level's effect against the reference, per seed block, over ``used`` of the
    ``total`` contexts (combinations of the other axes) where both levels were run."""

    blocks: list[str]
    per_block: np.ndarray
    used: int
    total: int


def balanced_effect(
    outcome: np.ndarray,
    blocks: np.ndarray,
    level: np.ndarray,
    value: str,
    reference: str,
    context: np.ndarray,
) -> BlockEffect:
    """The effect of ``value`` against ``reference``: in each block (seed), the mean over one
    set of contexts of the difference of the two levels' cell means. The same contexts in
    every block used, so every block estimates the same thing: on a balanced grid, the
    effect averaged over the grid (the balanced main effect), whatever the interactions.
    With cells missing (failed runs, pruned or failed points), the contexts and blocks kept
    are those that use the most cells (ties: more seeds): a context missing in most seeds,
    such as a pruned or failed point's, is left out (the effect is then over ``used`` of
    ``total`` contexts, not the balanced one, and the report says so), a seed missing one of
    the others is. Nested axes (n/a on some runs) are
    averaged within their cell."""
    frame = pd.DataFrame({"block": blocks, "level": level, "context": context, "y": outcome})
    frame = frame[frame["level"].isin([value, reference])]
    cells = frame.groupby(["block", "context", "level"])["y"].mean().unstack("level")
    if value not in cells or reference not in cells:
        return BlockEffect([], np.array([]), 0, 0)
    both = cells[value].notna() & cells[reference].notna()
    difference = (cells[value] - cells[reference])[both].unstack("context")  # block x context
    present = difference.notna()
    total = present.shape[1]
    if total == 0:
        return BlockEffect([], np.array([]), 0, 0)
    # contexts by how many blocks hold them; the first k of them, in the blocks holding all k
    order = present.sum(axis=0).sort_values(ascending=False, kind="stable").index
    best, chosen = None, ([], [])
    for k in range(1, total + 1):
        contexts = list(order[:k])
        kept = list(present.index[present[contexts].all(axis=1)])
        # the most cells over 2 or more seeds; ties: more seeds (a failed point is left
        # out, not a seed), then more contexts
        score = (k * len(kept) if len(kept) >= 2 else -1, len(kept), k)
        if best is None or score > best:
            best, chosen = score, (contexts, kept)
    contexts, kept = chosen
    per_block = difference.loc[kept, contexts].mean(axis=1).to_numpy(float)
    return BlockEffect([str(b) for b in kept], per_block, len(contexts), total)


def _reference_level(axis: str, baseline: Mapping[str, Any], values: np.ndarray) -> str | None:
    """The value an axis's effect is measured against: the baseline's, or the tutorial's
    where the baseline does not use the axis; ``None`` when no run where it applies has it."""
    key = axis.removeprefix("params.")
    reference = str(baseline[key])
    if reference == NOT_APPLICABLE:
        default = getattr(ModelConfig(), key.removeprefix("model."), NOT_APPLICABLE)
        if not key.startswith("model.") or str(default) not in set(values):
            return None
        reference = str(default)
    return reference if reference in set(values[values != NOT_APPLICABLE]) else None


def _cost_columns(runs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each run's FLOPs per image and training images per second (NaN where not logged)."""
    flops, speed = (
        runs[c].to_numpy(float) if c in runs else np.full(len(runs), np.nan)
        for c in ("metrics.model_flops_per_image", "metrics.train_images_per_s")
    )
    return flops, speed


def _change_cost(
    flops: np.ndarray, speed: np.ndarray, at: np.ndarray, base: np.ndarray
) -> dict[str, float]:
    """What a change costs, the runs ``at`` it over the ``base`` runs: FLOPs, and training
    seconds per image (the inverse of throughput)."""
    return {
        "flops_ratio": _mean_ratio(flops[at], flops[base]),
        "time_ratio": _mean_ratio(speed[base], speed[at]),
    }


def interactions(runs: pd.DataFrame, axes: Sequence[str], metric: str) -> pd.DataFrame:
    """Two-way interactions of the variant axes, with the seed as a block. For each pair,
    over the runs where both apply, each block (seed) gives its interaction terms from the
    least-squares fit ``metric ~ context + a + b + a:b`` on its runs; the terms are then
    tested against 0 across blocks (a t-test for two two-level axes, Hotelling's T-squared
    for more levels), so the seed-to-seed variation of the interaction is the error term.
    ``p_adjusted`` is Holm's over the pairs (a family of its own). For two two-level axes,
    ``contrast`` is the interaction itself: (effect of a at b's second value) - (at its
    first), with its 95% interval."""
    from latentseg.report.verdicts import adjust

    column = f"metrics.{metric}"
    runs = runs[runs[column].notna()]
    labels = _labels(runs, axes)
    pairs = pairing(runs, axes).to_numpy(dtype=str)
    outcome = runs[column].to_numpy(float)
    variant_axes = [a for a in axes if not is_stratum(a)]
    rows = []
    for i, a in enumerate(variant_axes):
        for b in variant_axes[i + 1 :]:
            mask = (labels[a] != NOT_APPLICABLE) & (labels[b] != NOT_APPLICABLE)
            la, lb = labels[a][mask], labels[b][mask]
            if len(set(la)) < 2 or len(set(lb)) < 2:
                continue
            terms = _block_interactions(
                outcome[mask], pairs[mask], la, lb, _context(labels, mask, axes, [a, b])
            )
            row: dict[str, Any] = {
                "axis_a": a.removeprefix("params."),
                "axis_b": b.removeprefix("params."),
                "levels": f"{len(set(la))}x{len(set(lb))}",
                "n_blocks": len(terms),
                **_hotelling(terms),
            }
            if terms.shape[1] == 1:
                paired = _paired(terms[:, 0], (-math.inf, math.inf))
                row.update(
                    contrast=paired["diff"],
                    contrast_ci95_low=paired["diff_ci95_low"],
                    contrast_ci95_high=paired["diff_ci95_high"],
                )
            rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_adjusted"] = adjust(table["p"].to_numpy(), "holm")
    return table


def _block_interactions(
    outcome: np.ndarray, blocks: np.ndarray, la: np.ndarray, lb: np.ndarray, context: np.ndarray
) -> np.ndarray:
    """One row per block that holds every level of both axes: its ``a:b`` coefficients."""
    levels_a, levels_b = set(la), set(lb)
    terms = []
    for block in np.unique(blocks):
        inside = blocks == block
        if set(la[inside]) != levels_a or set(lb[inside]) != levels_b:
            continue
        da, db = _dummies(la[inside]), _dummies(lb[inside])
        product = (da[:, :, None] * db[:, None, :]).reshape(len(da), -1)
        design = np.column_stack(
            [np.ones(int(inside.sum())), _dummies(context[inside]), da, db, product]
        )
        q = product.shape[1]
        if all(_estimable(design, design.shape[1] - 1 - k) for k in range(q)):
            terms.append(np.linalg.lstsq(design, outcome[inside], rcond=None)[0][-q:])
    q = (len(levels_a) - 1) * (len(levels_b) - 1)
    return np.array(terms, dtype=float).reshape(-1, q)


def _hotelling(terms: np.ndarray) -> dict[str, float]:
    """Hotelling's T-squared test of a zero mean for the rows of ``terms`` (blocks), as an
    F statistic with (q, n - q) degrees of freedom; the squared t-test when q is 1."""
    n, q = terms.shape
    out = {"F": math.nan, "df_num": float(q), "df_den": float(n - q) if n > q else math.nan}
    out["p"] = math.nan
    if n <= q:  # more terms than seeds: nothing left to estimate their spread with
        return out
    mean = terms.mean(axis=0)
    covariance = np.atleast_2d(np.cov(terms, rowvar=False))
    if not np.all(np.isfinite(covariance)) or np.linalg.matrix_rank(covariance) < q:
        return out
    t2 = n * float(mean @ np.linalg.solve(covariance, mean))
    f = t2 * (n - q) / (q * (n - 1))
    out.update(F=f, p=float(stats.f.sf(f, q, n - q)))
    return out


def _mean_ratio(top: np.ndarray, bottom: np.ndarray) -> float:
    """Mean of ``top`` / mean of ``bottom``, NaNs skipped (NaN when either has no value)."""
    if not (np.isfinite(top).any() and np.isfinite(bottom).any()):
        return math.nan
    a, b = float(np.nanmean(top)), float(np.nanmean(bottom))
    return a / b if b else math.nan
