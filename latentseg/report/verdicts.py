"""Verdicts for a family of comparisons, with the family-wise error controlled.

Each comparison is an estimate of a difference (variant minus baseline) with its standard
error and degrees of freedom (a paired t over seeds, of variant runs or of per-seed effects).
All comparisons of one report form one family. Two things are decided from it:

- **The sign** (``better``/``worse`` are possible): ``holm`` (default), Holm's step-down
  procedure, controls the family-wise error rate (the chance of any false sign) at
  ``alpha``; ``bonferroni`` is its single-step form; ``bh``, Benjamini-Hochberg, controls
  the false discovery rate instead (exploratory sweeps).
- **The intervals**, and equivalence drawn from them: under ``holm`` and ``bonferroni``
  every interval is a t-interval at level ``1 - alpha / m`` (Bonferroni): simultaneous, all
  of a family's intervals cover their true differences in at least ``1 - alpha`` of
  studies. Holm's step levels ``alpha / (m - R)`` are not simultaneous (with every
  difference large, all 30 intervals of a family cover in under half of them), so they
  decide signs only. Holm can therefore decide a sign whose interval still touches 0 (it is
  the more powerful test). Under ``bh`` the intervals are the false-coverage-rate intervals
  of Benjamini & Yekutieli (2005) at ``1 - R * alpha / m``: on average at most ``alpha`` of
  the selected comparisons' intervals miss; they are not simultaneous, so equivalence under
  ``bh`` is exploratory.

The four outcomes of an equivalence test (Lakens, Scheel & Isager 2018): ``equivalent``
when the interval lies inside ``(-sesoi, +sesoi)`` (the smallest effect of interest),
whether or not the sign was also decided (``direction`` then says which way: a negligible
difference); ``better``/``worse`` when the sign is decided and the interval reaches past the
SESOI on that side (``relevant`` when all of it lies beyond); ``inconclusive`` otherwise.
Equivalence is a two one-sided tests (TOST) decision at half the interval's error rate on
each side.

Adaptive seeds (a study's ``seeds: {min, max, step}``) decide after each round of seeds, a
sequential test: the verdicts are then taken at K planned looks, the look at n seeds at
level ``alpha_k`` with ``sum(alpha_k) = alpha`` (``spending``: the Kim-DeMets power family
``alpha * t**rho``, t = n / max, rho = 3, which spends little early and most at the last
look). Each look's family is decided as above at its ``alpha_k``; a comparison keeps the
first decided verdict (``settle``); one with no new pairs at a look stays in the family with
p = 1 and cannot be decided there; a sign decided at an earlier look stays rejected in
Holm's steps at later looks (the closed test over all looks: an intersection of true nulls is
rejected when any of its members reaches ``alpha_k / |J|`` at some look, size at most
``sum(alpha_k) = alpha``). Every interval shown is one of the ``m * K`` intervals at
level ``1 - alpha_k / m`` over a look's planned seeds, so by the union bound they all cover
at once in at least ``1 - alpha`` of studies, whatever rule chose which points got more
seeds: repeated confidence intervals (Jennison & Turnbull 1989).

Pure numpy/scipy: no pandas, no MLflow. ``tests/report/test_calibration.py``
measures the error rates, coverage and power of this module by simulation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

METHODS = {
    "holm": "Holm step-down (family-wise error rate)",
    "bonferroni": "Bonferroni (family-wise error rate, simultaneous intervals)",
    "bh": "Benjamini-Hochberg (false discovery rate; exploratory)",
}
ALPHA = 0.05
POWER = 0.8  # the power at which the minimal detectable effect is stated
# Default smallest effect of interest for metrics bounded in [0, 1] (mIoU, accuracy, Dice):
# one point. Smaller differences between seeds-averaged segmentation scores rarely change a
# design decision, and a few seeds can resolve them on the tasks latentseg ships.
DEFAULT_SESOI = 0.01
DECIDED = ("better", "worse", "equivalent")
# The power-family spending function's exponent (Kim & DeMets 1987): 3 spends like
# O'Brien-Fleming, keeping most of alpha for the last look, where the seeds are.
SPENDING_RHO = 3.0


@dataclass(frozen=True)
class Decisions:
    """One entry per comparison (NaN/``inconclusive`` where it could not be tested)."""

    p: np.ndarray  # unadjusted two-sided p-value (1 for a comparison with no new pairs)
    p_adjusted: np.ndarray
    ci_low: np.ndarray  # the family's interval: simultaneous (holm, bonferroni), FCR (bh)
    ci_high: np.ndarray
    verdict: np.ndarray  # of str
    direction: np.ndarray  # of str: "better"/"worse" where the test decided a sign, else ""
    relevant: np.ndarray  # of bool: the whole interval lies beyond the SESOI
    level: float  # the confidence level of every interval, e.g. 0.9929
    family_size: int  # comparisons that could be tested (standard error > 0, df >= 1)


def adjust(p, method: str = "holm") -> np.ndarray:
    """Adjusted p-values; NaN stays NaN and is outside the family. The same numbers as
    statsmodels' ``multipletests`` (``holm``, ``bonferroni``, ``fdr_bh``; a test checks),
    written out because that function runs a full garbage collection on every call, which
    costs a tenth of a second in a process that holds torch and makes simulation slow."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    if not m:
        return out
    order = tested[np.argsort(p[tested], kind="stable")]
    ranked = p[order]
    if method == "bonferroni":
        adjusted = ranked * m
    elif method == "holm":  # step-down: running maximum of (m - i) p_(i)
        adjusted = np.maximum.accumulate(ranked * (m - np.arange(m)))
    else:  # bh, step-up: running minimum from the largest of m p_(i) / i
        adjusted = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    out[order] = np.minimum(adjusted, 1.0)
    return out


def interval_level(rejected: int, family_size: int, alpha: float, method: str) -> float:
    """The error rate left to every interval of the family. Under ``holm`` and
    ``bonferroni`` the intervals are Bonferroni's, ``alpha / m``: simultaneous, they all
    cover their true differences in ``1 - alpha`` of studies (Holm's own step levels,
    ``alpha / (m - R)``, are not: with every difference large, all 30 of a family cover in
    under half of them). Under ``bh``: ``R * alpha / m``, the false-coverage-rate intervals
    of Benjamini & Yekutieli (2005), ``alpha / m`` when nothing is selected."""
    m = max(family_size, 1)
    if method == "bh" and rejected:
        return rejected * alpha / m
    return alpha / m


def decide(
    estimate,
    se,
    df,
    *,
    sesoi: float,
    alpha: float = ALPHA,
    method: str = "holm",
    bounds: tuple[float, float] = (-math.inf, math.inf),
    stale=None,
    rejected_before=None,
) -> Decisions:
    """Verdicts for a family of differences ``estimate`` with standard errors ``se`` and
    ``df`` degrees of freedom (arrays of one length). ``bounds`` clip the intervals to the
    range a difference can take (``(-1, 1)`` for a metric in [0, 1]). ``stale`` marks the
    comparisons that got no new pairs since the last look of an adaptive study: they stay
    in the family with p = 1 and cannot be newly decided (their numbers are the last look's).
    ``rejected_before`` marks those whose sign an earlier look decided: a rejection stands,
    so they count as rejected in Holm's steps (p = 0), as in the closed test over all looks.

    The four outcomes of an equivalence test (Lakens, Scheel & Isager 2018), from the test
    and the family's interval:

    - ``equivalent``: the interval lies inside ±``sesoi``, whether or not it also excludes
      0 (``direction`` then says which way the test decided: a negligible difference).
    - ``better`` / ``worse``: the test (Holm, Bonferroni or BH) decided a sign and the
      interval reaches past the SESOI on that side; ``relevant`` where all of it does.
    - ``inconclusive``: neither."""
    estimate, se, df = (np.atleast_1d(np.asarray(a, dtype=float)) for a in (estimate, se, df))
    stale = np.zeros(estimate.shape, bool) if stale is None else np.asarray(stale, bool)
    tested = (se > 0) & np.isfinite(se) & (df >= 1) & np.isfinite(estimate)
    p = np.full_like(estimate, np.nan)
    p[tested] = 2 * special.stdtr(df[tested], -np.abs(estimate[tested] / se[tested]))
    p[tested & stale] = 1.0
    before = (
        np.zeros(estimate.shape, bool)
        if rejected_before is None
        else np.asarray(rejected_before, bool)
    )
    p_test = np.where(tested & before, 0.0, p)
    p_adjusted = adjust(p_test, method)
    rejected = tested & ~stale & ~before & (p_adjusted <= alpha)
    m = int(tested.sum())
    error = interval_level(int(rejected.sum()), m, alpha, method)
    half = np.full_like(estimate, np.nan)
    half[tested] = special.stdtrit(df[tested], 1 - error / 2) * se[tested]
    low = np.clip(estimate - half, *bounds)
    high = np.clip(estimate + half, *bounds)
    inside = tested & ~stale & (low > -sesoi) & (high < sesoi)  # NaN sesoi: never
    direction = np.full(estimate.shape, "", dtype=object)
    direction[rejected & (estimate > 0)] = "better"
    direction[rejected & (estimate < 0)] = "worse"
    verdict = np.full(estimate.shape, "inconclusive", dtype=object)
    verdict[rejected & ~inside] = direction[rejected & ~inside]
    verdict[inside] = "equivalent"
    relevant = ((verdict == "better") & (low >= sesoi)) | ((verdict == "worse") & (high <= -sesoi))
    return Decisions(p, p_adjusted, low, high, verdict, direction, relevant, 1 - error, m)


def power(effect: float, se: float, df: float, error: float, points: int = 4000) -> float:
    """Chance that a two-sided t-test at level ``error`` rejects when the true difference is
    ``effect`` and its estimate has standard error ``se``: the normal mean, integrated over
    the chi-square of the variance estimate on a quantile grid of ``points``. This is the
    noncentral t's two-sided tail; it agrees with ``scipy.stats.nct.sf`` to about 1e-5 at 2 to
    9 degrees of freedom (a test checks), and stays finite where ``nct.cdf`` returns NaN for a
    large noncentrality."""
    critical = special.stdtrit(df, 1 - error / 2)
    noncentrality = abs(effect) / se
    scale = np.sqrt(_chi2_grid(float(df), points) / df)
    hit = special.ndtr(noncentrality - critical * scale) + special.ndtr(
        -noncentrality - critical * scale
    )
    return float(hit.mean())


# A grid of 256 points is within 0.002 of the 4000-point one everywhere a test looks (1 to 999
# degrees of freedom, error rates down to 1e-4): a comparison of power with a threshold is
# decided on it unless it lands within this margin, and on the full grid then.
COARSE_POINTS, COARSE_MARGIN = 256, 0.01


def power_reaches(effect: float, se: float, df: float, error: float, target: float) -> bool:
    """``power(effect, se, df, error) >= target``, at a sixteenth of the cost where the
    answer is clear (the calibration's simulations ask it a hundred thousand times)."""
    rough = power(effect, se, df, error, COARSE_POINTS)
    if abs(rough - target) > COARSE_MARGIN:
        return rough > target
    return power(effect, se, df, error) >= target


@functools.lru_cache(maxsize=512)
def _chi2_grid(df: float, points: int = 4000) -> np.ndarray:
    return stats.chi2.ppf((np.arange(points) + 0.5) / points, df)


def mde(se: float, df: float, error: float, target: float = POWER) -> float:
    """The minimal detectable effect: the true difference that a two-sided t-test at level
    ``error`` detects with probability ``target``, given the standard error ``se`` of the
    estimate and its degrees of freedom. NaN when ``se`` or ``df`` cannot say."""
    if not (se > 0 and math.isfinite(se) and df >= 1):
        return math.nan
    upper = se * (special.stdtrit(df, 1 - error / 2) + special.stdtrit(df, target))
    for _ in range(60):  # widen until the bracket holds the answer
        if power_reaches(upper, se, df, error, target):
            break
        upper *= 2
    return float(optimize.brentq(lambda d: power(d, se, df, error) - target, 0.0, upper))


def seeds_needed(
    sd: float, sesoi: float, error: float, target: float = POWER, limit: int = 1000
) -> float:
    """Seed pairs needed for an effect of ``sesoi`` to be detected with probability
    ``target`` (paired t at level ``error``), given the standard deviation ``sd`` of one
    pair's difference. NaN when ``sd`` is unknown, ``inf`` past ``limit``."""
    if not (sd > 0 and math.isfinite(sd)) or not sesoi > 0:
        return math.nan

    return _smallest(lambda n: power_reaches(sesoi, sd / math.sqrt(n), n - 1, error, target), limit)


def equivalence_power(sd: float, n: int, sesoi: float, error: float) -> float:
    """Chance that the interval at level ``1 - error`` over ``n`` seed pairs lies inside
    ±``sesoi`` when the true difference is 0 and one pair's difference has standard
    deviation ``sd``: the mean is normal, the spread chi-square, integrated on a grid."""
    if n < 2 or not (sd > 0 and math.isfinite(sd)) or not sesoi > 0:
        return math.nan
    df = n - 1
    critical = special.stdtrit(df, 1 - error / 2)
    room = sesoi * math.sqrt(n) / sd - critical * np.sqrt(_chi2_grid(float(df)) / df)
    return float(np.clip(2 * special.ndtr(room) - 1, 0.0, 1.0).mean())


def seeds_for_equivalence(
    sd: float, sesoi: float, error: float, target: float = POWER, limit: int = 1000
) -> float:
    """Seed pairs needed to show equivalence (the interval inside ±``sesoi``) with
    probability ``target`` when the true difference is 0. Always more than
    :func:`seeds_needed` for the same SESOI: the whole interval must fit within the margin.
    NaN when ``sd`` is unknown, ``inf`` past ``limit``."""
    if not (sd > 0 and math.isfinite(sd)) or not sesoi > 0:
        return math.nan
    return _smallest(lambda n: equivalence_power(sd, n, sesoi, error) >= target, limit)


def _smallest(enough, limit: int) -> float:
    """The smallest n >= 2 with ``enough(n)`` (monotone in n); ``inf`` past ``limit``."""
    low, high = 1, 2  # enough(low) is false (one pair has no spread to test with)
    while not enough(high):  # double, then bisect
        if high >= limit:
            return math.inf
        low, high = high, min(2 * high, limit)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return float(high)


def hedges_g(diffs: np.ndarray) -> float:
    """The paired standardized mean difference d_z with Hedges' small-sample correction
    ``1 - 3 / (4 * (n - 1) - 1)`` (d_z overstates the effect at a few seeds)."""
    n = len(diffs)
    if n < 3:
        return math.nan
    sd = float(np.std(diffs, ddof=1))
    if not sd > 0:
        return math.nan
    return float(np.mean(diffs) / sd * (1 - 3 / (4 * (n - 1) - 1)))


def wilcoxon_can_reject(n: int, alpha: float = ALPHA) -> bool:
    """The exact two-sided signed-rank test's smallest p-value is ``2 / 2**n``: below 6
    pairs it cannot reach 0.05, whatever the data."""
    return n > 0 and 2.0 / 2**n <= alpha


def spending(alpha: float, planned: list[int], rho: float = SPENDING_RHO) -> list[float]:
    """The error rate of each look: the increments of ``alpha * (n_k / n_K) ** rho`` (they
    add up to ``alpha``). A single look gets all of ``alpha``: a fixed design."""
    last = planned[-1]
    spent = [alpha * (n / last) ** rho for n in planned]
    spent[-1] = alpha  # exactly, whatever the rounding
    return [b - a for a, b in zip([0.0, *spent[:-1]], spent, strict=True)]


def settle(verdict: np.ndarray, decided_at: np.ndarray, new: np.ndarray, look: int) -> np.ndarray:
    """Fold one look's verdicts ``new`` into ``verdict`` (in place) where no earlier look
    decided; ``decided_at`` records the look (1-based; 0: not decided). Returns the mask of
    comparisons this look decided."""
    fresh = ~np.isin(verdict, DECIDED) & np.isin(new, DECIDED)
    verdict[fresh] = new[fresh]
    decided_at[fresh] = look
    return fresh


FUTILITY_Z = 1.2816  # the far end of an 80% interval: the most optimistic plausible effect
FUTILITY_POWER = 0.2


def out_of_reach(estimate: float, se: float, n: int, last: int, error: float, sesoi: float) -> bool:
    """Whether an open comparison (``n`` seed pairs, difference ``estimate`` with standard
    error ``se``) is out of reach of ``last`` seeds at the last look's per-comparison error
    rate ``error``: even a true difference at the far end of its 80% interval would be found
    less than 20% of the time, and the near end is too far from 0 for an interval at ``last``
    seeds to fit within ±``sesoi``. Adaptive seeds stop seeding such a comparison (it stays
    inconclusive); stopping never adds a false verdict."""
    if not (se > 0 and math.isfinite(se)) or n < 2 or last <= n:
        return False
    sd = se * math.sqrt(n)
    far = abs(estimate) + FUTILITY_Z * se
    if power_reaches(far, sd / math.sqrt(last), last - 1, error, FUTILITY_POWER):
        return False
    near = max(abs(estimate) - FUTILITY_Z * se, 0.0)
    half = special.stdtrit(last - 1, 1 - error / 2) * sd / math.sqrt(last)
    return not (math.isfinite(sesoi) and near + half < sesoi)
