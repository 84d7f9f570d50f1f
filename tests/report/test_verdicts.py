"""The decision rule, the linear models and the bookkeeping behind the verdicts, each against
a hand computation or a well-kept implementation."""

import gc
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from latentseg.report.effects import axis_effects, interactions
from latentseg.report.stats import apply_verdicts, deduplicate, mean_ci, metric_bounds
from latentseg.report.verdicts import (
    COARSE_MARGIN,
    COARSE_POINTS,
    adjust,
    decide,
    hedges_g,
    mde,
    power,
    power_reaches,
    seeds_needed,
    wilcoxon_can_reject,
)


@pytest.mark.parametrize(
    ("method", "name"), [("holm", "holm"), ("bonferroni", "bonferroni"), ("bh", "fdr_bh")]
)
def test_adjusted_p_values_equal_statsmodels_multipletests(method, name):
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    # multipletests runs gc.collect() on every call: with torch and MLflow loaded that is
    # 0.3 s each. Frozen objects are outside the collector, so the 50 calls cost milliseconds.
    gc.freeze()
    try:
        for _ in range(50):
            p = rng.uniform(size=int(rng.integers(1, 40))) ** 3
            assert adjust(p, method) == pytest.approx(multipletests(p, method=name)[1])
    finally:
        gc.unfreeze()
    with_nan = np.array([0.01, np.nan, 0.04])
    out = adjust(with_nan, "holm")  # NaN is outside the family: m = 2
    assert math.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.02, 0.04])


@pytest.mark.parametrize("method", ["holm", "bonferroni", "bh"])
def test_verdicts_follow_the_four_outcomes_of_an_equivalence_test(method):
    """equivalent exactly when the interval lies inside ±SESOI (whether or not the sign was
    decided); better/worse exactly when the sign was decided and the interval reaches past
    the SESOI; relevant when all of it lies beyond. Under bonferroni the interval excludes 0
    exactly when the sign is decided; Holm decides at least those signs."""
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(300):
        m = int(rng.integers(1, 25))
        estimate = rng.normal(0, 0.03, m) + rng.choice([0, 0.05, 0.005], m)
        se = rng.uniform(0.0005, 0.03, m)
        result = decide(estimate, se, np.full(m, 4.0), sesoi=0.01, method=method)
        inside = (result.ci_low > -0.01) & (result.ci_high < 0.01)
        signed = result.direction != ""
        assert ((result.verdict == "equivalent") == inside).all()
        assert ((result.verdict == "better") == (signed & ~inside & (estimate > 0))).all()
        assert ((result.verdict == "worse") == (signed & ~inside & (estimate < 0))).all()
        beyond = (result.ci_low >= 0.01) | (result.ci_high <= -0.01)
        assert (result.relevant == (np.isin(result.verdict, ["better", "worse"]) & beyond)).all()
        excludes = (result.ci_low > 0) | (result.ci_high < 0)
        if method == "bonferroni":
            assert (excludes == signed).all()
        else:
            assert (signed[excludes]).all()
        seen.update(zip(result.verdict, result.direction, result.relevant, strict=True))
    assert {("equivalent", "better", False), ("better", "better", True)} <= seen


def test_a_decided_but_negligible_difference_is_equivalent_not_worse():
    """The demo on an AVX2 CPU: -0.0023 [-0.0041, -0.0005] at 5 seeds, SESOI 0.01. The
    interval excludes 0 and lies inside the margin: equivalent, slightly worse."""
    se = 0.0018 / stats.t.ppf(0.975, 4)
    result = decide([-0.0023], [se], [4.0], sesoi=0.01)
    assert result.ci_low[0] == pytest.approx(-0.0041, abs=1e-6)
    assert result.ci_high[0] == pytest.approx(-0.0005, abs=1e-6)
    assert list(result.verdict) == ["equivalent"] and list(result.direction) == ["worse"]
    large = decide([-0.05], [se], [4.0], sesoi=0.01)
    assert list(large.verdict) == ["worse"] and bool(large.relevant[0])
    straddles = decide([-0.012], [0.004], [4.0], sesoi=0.01)  # decided, reaches both sides
    assert list(straddles.verdict) == ["worse"] and not straddles.relevant[0]


def test_intervals_are_simultaneous_bonferroni_ones_and_holm_decides_the_signs():
    # three comparisons, 4 df: p-values about 0.0001, 0.03 and 0.6
    estimate, se, df = np.array([0.2, 0.05, 0.01]), np.array([0.02, 0.016, 0.019]), np.full(3, 4.0)
    result = decide(estimate, se, df, sesoi=0.01)
    p = 2 * stats.t.sf(np.abs(estimate / se), 4)
    rejected = int((adjust(p, "holm") <= 0.05).sum())
    assert rejected == 1 and list(result.verdict) == ["better", "inconclusive", "inconclusive"]
    assert result.level == pytest.approx(1 - 0.05 / 3)  # alpha / m, whatever Holm rejects
    half = stats.t.ppf(1 - 0.05 / 6, 4) * se
    assert result.ci_low == pytest.approx(estimate - half)
    bonferroni = decide(estimate, se, df, sesoi=0.01, method="bonferroni")
    assert bonferroni.level == pytest.approx(1 - 0.05 / 3)
    # Holm decides a sign Bonferroni does not: the second at 0.05 / 2 once the first is out
    estimate = np.array([0.2, 0.06])
    se = np.array([0.02, 0.06 / stats.t.ppf(1 - 0.05 / 3, 4)])  # p between 0.025 and 0.033
    holm, single = (
        decide(estimate, se, np.full(2, 4.0), sesoi=0.01),
        decide(estimate, se, np.full(2, 4.0), sesoi=0.01, method="bonferroni"),
    )
    assert list(holm.verdict) == ["better", "better"]
    assert list(single.verdict) == ["better", "inconclusive"]
    assert holm.ci_low[1] == single.ci_low[1] < 0  # the same simultaneous interval


def test_a_comparison_with_no_new_pairs_stays_in_the_family_undecided():
    """At a look of an adaptive study a comparison whose variant got no seeds has p = 1: it
    counts in m, and is neither decided nor found equivalent there."""
    estimate, se, df = np.array([0.2, 0.2, 0.0]), np.array([0.01, 0.01, 0.001]), np.full(3, 4.0)
    fresh = decide(estimate, se, df, sesoi=0.01)
    assert list(fresh.verdict) == ["better", "better", "equivalent"]
    result = decide(estimate, se, df, sesoi=0.01, stale=[False, True, True])
    assert list(result.verdict) == ["better", "inconclusive", "inconclusive"]
    assert result.p[1] == 1.0 and result.family_size == 3
    assert result.level == pytest.approx(1 - 0.05 / 3)


def test_untestable_comparisons_are_inconclusive_and_outside_the_family():
    result = decide([0.1, 0.05, 0.2], [0.0, math.nan, 0.01], [2, 2, 2], sesoi=0.01)
    assert list(result.verdict) == ["inconclusive", "inconclusive", "better"]
    assert result.family_size == 1 and math.isnan(result.p_adjusted[0])


def test_intervals_stay_in_the_range_a_difference_can_take():
    result = decide([0.9], [0.2], [2], sesoi=0.01, bounds=(-1, 1))
    assert result.ci_high[0] == 1.0 and result.ci_low[0] < 0.9
    assert mean_ci([0.98, 0.99, 0.2], bounds=(0, 1))[3] == 1.0
    assert mean_ci([0.01, 0.02, 0.9], bounds=(0, 1))[2] == 0.0
    assert metric_bounds("test_miou") == (0, 1) and metric_bounds("val_iou_circle") == (0, 1)
    assert metric_bounds("test_dead_latents") == (0, math.inf)
    assert metric_bounds("test_loss") == (0, math.inf)


def test_power_agrees_with_a_direct_simulation_and_mde_inverts_it():
    rng = np.random.default_rng(2)
    for n, error in ((3, 0.05), (4, 0.01), (8, 0.05 / 7)):
        se = 0.02 / math.sqrt(n)
        effect = mde(se, n - 1, error)
        assert power(effect, se, n - 1, error) == pytest.approx(0.8, abs=1e-3)
        diffs = rng.normal(effect, 0.02, (40_000, n))
        t = diffs.mean(1) / (diffs.std(1, ddof=1) / math.sqrt(n))
        simulated = np.mean(np.abs(t) > stats.t.ppf(1 - error / 2, n - 1))
        assert simulated == pytest.approx(0.8, abs=0.01)
    assert math.isnan(mde(0.0, 2, 0.05)) and math.isnan(mde(0.01, 0, 0.05))


def test_a_power_threshold_is_decided_as_on_the_full_grid():
    """The coarse grid stays well inside the margin around a threshold over the degrees of
    freedom, error rates and effects the report meets, so power_reaches answers as the full
    grid does, near the threshold too."""
    worst = 0.0
    for df in (1, 2, 3, 5, 9, 20, 60, 999):
        for error in (0.05, 0.01, 1e-3, 1e-4):
            for noncentrality in np.linspace(0, 30, 61):
                full = power(noncentrality, 1.0, df, error)
                coarse = power(noncentrality, 1.0, df, error, COARSE_POINTS)
                worst = max(worst, abs(full - coarse))
                for target in (0.2, 0.8, full, full + 1e-6, full - 1e-6):
                    assert power_reaches(noncentrality, 1.0, df, error, target) == (full >= target)
    assert worst < COARSE_MARGIN / 4


def test_seeds_needed_is_the_smallest_n_with_80_percent_power():
    n = int(seeds_needed(0.02, 0.01, 0.05))
    assert power(0.01, 0.02 / math.sqrt(n), n - 1, 0.05) >= 0.8
    assert power(0.01, 0.02 / math.sqrt(n - 1), n - 2, 0.05) < 0.8
    assert seeds_needed(0.02, 0.02, 0.05) < n  # a larger effect needs fewer seeds
    assert math.isinf(seeds_needed(1.0, 1e-4, 0.05)) and math.isnan(seeds_needed(0.0, 0.01, 0.05))


def test_hedges_g_and_when_wilcoxon_can_reject():
    diffs = np.array([0.1, 0.2, 0.0, 0.15])
    d_z = diffs.mean() / diffs.std(ddof=1)
    assert hedges_g(diffs) == pytest.approx(d_z * (1 - 3 / (4 * 3 - 1)))
    assert [wilcoxon_can_reject(n) for n in (2, 5, 6)] == [False, False, True]


def test_reruns_and_retried_trials_count_once_the_latest_kept():
    frame = pd.DataFrame(
        {
            "params.model.num_latents": ["4", "4", "4", "8"],
            "params.train.seed": ["1", "1", "2", "1"],
            "params.train.threads": ["1", "2", "1", "1"],  # how it ran, not what
            "params.tracking.run_name": ["a", "b", "c", "d"],
            "metrics.test_miou": [0.5, 0.6, 0.7, 0.8],
            "end_time": pd.to_datetime([1, 2, 3, 4], unit="s"),
        }
    )
    kept, merged = deduplicate(frame)
    assert merged == 1 and len(kept) == 3
    assert kept.loc[kept["params.tracking.run_name"] == "b", "metrics.test_miou"].item() == 0.6


def factorial(cells: dict, seeds=("1", "2", "3")) -> pd.DataFrame:
    rows = []
    for seed_index, seed in enumerate(seeds):
        for (attention, heads), value in cells.items():
            rows.append(
                {
                    "params.model.expert_attention": attention,
                    "params.model.num_heads": heads,
                    "params.train.seed": seed,
                    "metrics.test_miou": value
                    + 0.1 * seed_index
                    + 0.001 * (seed_index % 2) * len(heads),
                }
            )
    return pd.DataFrame(rows)


AXES = ["params.model.expert_attention", "params.model.num_heads"]
BASELINE = {"model.expert_attention": "True", "model.num_heads": "1"}


def test_a_main_effect_on_an_unbalanced_design_compares_like_with_like():
    """Heads 4 adds 0.05 everywhere; expert attention off subtracts 0.1. One cell (off,
    heads 4) is missing on two seeds: a plain average of heads-4 runs against heads-1 runs
    would mix in the attention effect (and show about -0.03); the blocked model does not."""
    cells = {("True", "1"): 0.6, ("True", "4"): 0.65, ("False", "1"): 0.5, ("False", "4"): 0.55}
    frame = factorial(cells)
    frame = frame[~((frame["params.model.expert_attention"] == "False") & (frame["params.model.num_heads"] == "4") & (frame["params.train.seed"] != "1"))]  # fmt: skip
    effects = axis_effects(frame, AXES, "test_miou", BASELINE).set_index("axis")
    assert effects.loc["model.num_heads", "diff"] == pytest.approx(0.05, abs=2e-3)
    assert effects.loc["model.expert_attention", "diff"] == pytest.approx(-0.1, abs=2e-3)


def test_interactions_are_found_and_measured():
    """Heads help by 0.05 with expert attention and by 0 without: an interaction of -0.05."""
    with_interaction = factorial(
        {("True", "1"): 0.6, ("True", "4"): 0.65, ("False", "1"): 0.5, ("False", "4"): 0.5}
    )
    (row,) = interactions(with_interaction, AXES, "test_miou").to_dict("records")
    assert (row["axis_a"], row["axis_b"], row["levels"]) == (
        "model.expert_attention",
        "model.num_heads",
        "2x2",
    )
    # treatment coding, levels sorted: (True,4) - (True,1) - (False,4) + (False,1)
    assert row["contrast"] == pytest.approx(0.05, abs=2e-3) and row["p"] < 0.01
    additive = factorial(
        {("True", "1"): 0.6, ("True", "4"): 0.65, ("False", "1"): 0.5, ("False", "4"): 0.55}
    )
    (row,) = interactions(additive, AXES, "test_miou").to_dict("records")
    assert abs(row["contrast"]) < 2e-3 and row["p"] > 0.05


def test_one_family_decides_the_variants_and_the_main_effects_together():
    comparisons = pd.DataFrame(
        {
            "is_baseline": [True, False, False],
            "diff": [0.0, 0.2, 0.001],
            "se": [math.nan, 0.01, 0.001],
            "df": [math.nan, 4.0, 4.0],
            "n_pairs": [5, 5, 5],
        }
    )
    effects = pd.DataFrame({"diff": [-0.05], "se": [0.03], "df": [4.0], "n_pairs": [5]})
    (comparisons, effects), family = apply_verdicts(
        [comparisons, effects], sesoi=0.01, alpha=0.05, method="holm", bounds=(0.0, 1.0)
    )
    assert family.size == 3 and "3 comparisons form one family" in family.describe("test_miou")
    assert list(comparisons["verdict"]) == ["baseline", "better", "equivalent"]
    assert list(effects["verdict"]) == ["inconclusive"]
    assert comparisons.loc[1, "mde"] == pytest.approx(mde(0.01, 4, 0.05 / 3))
    assert effects.loc[0, "seeds_needed"] == seeds_needed(0.03 * math.sqrt(5), 0.01, 0.05 / 3)
    assert math.isnan(comparisons.loc[0, "p_adjusted"])


def test_a_main_effect_on_a_balanced_grid_is_the_marginal_effect_statsmodels_finds():
    """On a balanced grid with an interaction, a block's effect is the difference of the
    level's means over the other axis: statsmodels' OLS with sum-to-zero coding of the
    context and its interaction finds the same marginal contrast."""
    import statsmodels.formula.api as smf

    from latentseg.report.effects import balanced_effect

    rng = np.random.default_rng(3)
    level = np.repeat(["a", "b", "c"], 3)
    context = np.tile(["x", "y", "z"], 3)
    y = rng.normal(size=len(level))
    frame = pd.DataFrame({"y": y, "level": level, "context": context})
    for value in ("b", "c"):
        effect = balanced_effect(y, np.zeros(len(y), dtype=str), level, value, "a", context)
        cells = frame.groupby(["level", "context"])["y"].mean()
        expected = (cells[value] - cells["a"]).mean()
        fit = smf.ols("y ~ C(level, Treatment('a')) * C(context, Sum)", frame).fit()
        assert effect.per_block == pytest.approx([expected])
        # the treatment coefficient of the level at the sum-coded (average) context
        assert fit.params[f"C(level, Treatment('a'))[T.{value}]"] == pytest.approx(expected)
        assert (effect.used, effect.total) == (3, 3)


def test_a_main_effect_with_missing_cells_says_when_it_is_not_the_balanced_one():
    """A 2x2 grid where heads help by 0.01 with expert attention and by 0.04 without (a
    balanced effect of 0.025), 6 seeds; the (no attention, 4 heads) cell is missing in 4 of
    them. The effect kept uses the cells present in every seed: heads over 1 of 2 contexts
    (0.01, said so) rather than a blend weighted by which seeds ran the cell (the per-seed
    least-squares rule before it reported 0.015 here, neither the balanced 0.025 nor the
    0.01 where both ran)."""
    cells = {("True", "1"): 0.6, ("True", "4"): 0.61, ("False", "1"): 0.5, ("False", "4"): 0.54}
    frame = factorial(cells, seeds=tuple(str(s) for s in range(6)))
    drop = (
        (frame["params.model.expert_attention"] == "False")
        & (frame["params.model.num_heads"] == "4")
        & frame["params.train.seed"].isin(["1", "2", "3", "4"])
    )
    effects = axis_effects(frame[~drop], AXES, "test_miou", BASELINE).set_index("axis")
    heads = effects.loc["model.num_heads"]
    assert heads["contexts"] == "1 of 2" and not heads["balanced"]
    assert heads["diff"] == pytest.approx(0.01, abs=2e-3) and heads["n_pairs"] == 6
    full = axis_effects(frame, AXES, "test_miou", BASELINE).set_index("axis")
    assert full.loc["model.num_heads", "diff"] == pytest.approx(0.025, abs=2e-3)
    assert full.loc["model.num_heads", "balanced"]
