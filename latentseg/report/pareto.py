"""A Pareto front that knows its noise: every point of a study gets one membership verdict,
``on the front``, ``dominated`` or ``inconclusive``, with the error of all the front's claims
controlled at ``alpha``.

Objectives are oriented so that larger is better (a minimized one is negated; a measured
cost such as throughput is compared as a log ratio). An objective whose values do not vary
between the seeds of any point (parameters, FLOPs) is **fixed**: it is known exactly and
carries no interval. The others are **noisy**: their differences between two points are
paired by seed and estimated with a t-interval.

Differences smaller than an objective's margin ``eps`` (the report's smallest effect of
interest for its metric; 5% for a measured cost, compared as a ratio; none for an exact
one) do not count, as in the
epsilon-Pareto front of epsilon-PAL (Zuluaga, Krause & Pueschel 2016). With ``d`` the true
difference Q - P of an objective (known exactly for a fixed one):

- Q **dominates** P when Q is no worse in every objective (``d >= -eps``) and better in
  one (``d > eps``).
- The report **shows** that Q dominates P when the family's interval ``[L, U]`` of every
  noisy difference has ``L >= -eps``, no fixed difference is below ``-eps``, and some
  fixed difference is above ``eps`` or some ``L > eps``. It **shows** that Q does not
  dominate P when a fixed difference is below ``-eps``, or some ``U < -eps``, or no fixed
  difference is above ``eps`` and every ``U <= eps``.
- P is ``dominated`` when some Q is shown to dominate it, ``on the front`` when every
  other point is shown not to, and ``inconclusive`` otherwise.

The intervals are Bonferroni's over every interval the front uses: pairs x noisy objectives
(x looks, with adaptive seeds: each pair's interval is the one at the last look both of its
points reached, one of ``K`` planned per pair). A pair whose fixed objectives already rule
out dominance both ways needs none. When all intervals cover, which happens in at least
``1 - alpha`` of studies, every claim above is true: the chance of any false ``dominated``
or ``on the front`` verdict in a report is at most ``alpha``.
``tests/report/test_pareto.py`` measures it by simulation on fronts with planted truth.

Pure numpy/scipy: no pandas, no MLflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

ON_FRONT = "on the front"
DOMINATED = "dominated"
INCONCLUSIVE = "inconclusive"
MEMBERSHIP = (ON_FRONT, INCONCLUSIVE, DOMINATED)  # in the order the report lists them


@dataclass(frozen=True)
class Membership:
    """One entry per point, and the pairwise intervals the verdicts came from."""

    verdict: np.ndarray  # of str, one of MEMBERSHIP
    dominated_by: list[list[int]]  # per point: the points shown to dominate it
    intervals: int  # how many intervals the family holds
    level: float  # the confidence level of each of them


def shown_dominance(fixed_q, fixed_p, low, high, eps, fixed_eps=0.0) -> tuple[bool, bool]:
    """(Q is shown to dominate P, Q is shown not to dominate P), from the fixed values of Q
    and P (larger is better; differences within ``fixed_eps`` are ties) and the intervals
    ``[low, high]`` of the noisy differences Q - P with their margins ``eps``."""
    fixed_q, fixed_p = np.asarray(fixed_q, float), np.asarray(fixed_p, float)
    low, high, eps = (np.asarray(a, float) for a in (low, high, eps))
    fixed_worse, fixed_better = _fixed_order(fixed_q, fixed_p, fixed_eps)
    # a fixed value that one of them lacks is unknown: Q is then neither shown no worse
    # there nor shown not better
    unknown = bool(np.any(np.isnan(fixed_q) | np.isnan(fixed_p)))
    dominates = (
        not fixed_worse
        and not unknown
        and bool(np.all(low >= -eps))
        and (fixed_better or bool(np.any(low > eps)))
    )
    not_dominates = (
        fixed_worse
        or bool(np.any(high < -eps))
        or (not fixed_better and not unknown and bool(np.all(high <= eps)))
    )
    return dominates, not_dominates


def membership(
    noisy: list[np.ndarray],
    fixed: np.ndarray,
    eps,
    alpha: float = 0.05,
    looks: int = 1,
    family: int | None = None,
    fixed_eps=0.0,
) -> Membership:
    """Membership verdicts for ``P`` points.

    ``noisy``: one array per noisy objective, points x seeds (NaN where a point lacks that
    seed), larger is better; seeds are paired by column. ``fixed``: points x fixed
    objectives, larger is better (zero columns: none). ``eps``: one margin per noisy
    objective. ``looks``: the planned looks of an adaptive design (1: fixed seeds).
    ``family``: the intervals of the whole family when these points are one part of it (the
    points of one dataset in a report over several); by default those this call needs.
    ``fixed_eps``: the margins of the fixed objectives (one, or one per column): differences
    within them are ties."""
    count = len(noisy[0]) if noisy else len(fixed)
    fixed = np.asarray(fixed, float)
    fixed = fixed.reshape(count, -1) if fixed.size else np.zeros((count, 0))
    fixed_eps = np.broadcast_to(np.asarray(fixed_eps, float), (fixed.shape[1],))
    eps = np.atleast_1d(np.asarray(eps, float))
    pairs = [(a, b) for a in range(count) for b in range(a + 1, count)]

    needed = [(a, b) for a, b in pairs if not settled_by_fixed(fixed, a, b, fixed_eps)]
    intervals = family if family is not None else len(needed) * len(noisy) * max(looks, 1)
    error = alpha / max(intervals, 1)
    low = np.full((count, count, len(noisy)), -math.inf)
    high = np.full((count, count, len(noisy)), math.inf)
    for a, b in needed:
        for j, values in enumerate(noisy):
            lo, hi = paired_interval(values[a], values[b], error)
            low[a, b, j], high[a, b, j] = lo, hi  # a - b
            low[b, a, j], high[b, a, j] = -hi, -lo
    shown = np.zeros((count, count), bool)  # shown[q, p]: q is shown to dominate p
    ruled_out = np.zeros((count, count), bool)  # q is shown not to dominate p
    for q in range(count):
        for p in range(count):
            if q != p:
                shown[q, p], ruled_out[q, p] = shown_dominance(
                    fixed[q], fixed[p], low[q, p], high[q, p], eps, fixed_eps
                )
    verdict = np.full(count, INCONCLUSIVE, dtype=object)
    others = ~np.eye(count, dtype=bool)
    for p in range(count):
        if shown[:, p].any():
            verdict[p] = DOMINATED
        elif ruled_out[others[:, p], p].all():
            verdict[p] = ON_FRONT
    dominated_by = [np.flatnonzero(shown[:, p]).tolist() for p in range(count)]
    return Membership(verdict, dominated_by, intervals, 1 - error)


def _fixed_order(fixed_q, fixed_p, fixed_eps) -> tuple[bool, bool]:
    """(Q is worse than P in some fixed objective, Q is better in some), beyond the margins;
    a value either lacks (NaN) decides neither."""
    return (
        bool(np.any(fixed_q < fixed_p - fixed_eps)),  # NaN compares False
        bool(np.any(fixed_q > fixed_p + fixed_eps)),
    )


def settled_by_fixed(fixed: np.ndarray, a: int, b: int, fixed_eps=0.0) -> bool:
    """Whether the fixed objectives alone rule out dominance both ways (each point is below
    the other, beyond the margin, in one of them): the pair needs no interval."""
    a_worse, b_worse = _fixed_order(fixed[a], fixed[b], fixed_eps)
    return a_worse and b_worse


def intervals_needed(fixed: np.ndarray, noisy: int, looks: int = 1, fixed_eps=0.0) -> int:
    """The intervals :func:`membership` uses for points with these ``fixed`` values."""
    count = len(fixed)
    pairs = sum(
        not settled_by_fixed(fixed, a, b, fixed_eps)
        for a in range(count)
        for b in range(a + 1, count)
    )
    return pairs * noisy * max(looks, 1)


def paired_interval(a: np.ndarray, b: np.ndarray, error: float) -> tuple[float, float]:
    """The two-sided t-interval at level ``1 - error`` of the mean of ``a - b`` over the
    seeds both have; unbounded below 2 pairs, and where the differences do not vary (no
    spread to estimate the noise from: a few seeds of a coarse metric, not certainty)."""
    both = ~(np.isnan(a) | np.isnan(b))
    diffs = np.asarray(a, float)[both] - np.asarray(b, float)[both]
    n = len(diffs)
    if n < 2:
        return -math.inf, math.inf
    mean = float(diffs.mean())
    se = float(diffs.std(ddof=1)) / math.sqrt(n)
    if not se > 0:
        return -math.inf, math.inf
    half = float(special.stdtrit(n - 1, 1 - error / 2)) * se
    return mean - half, mean + half
