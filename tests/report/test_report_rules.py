"""What a report must say beside its verdicts, on runs frames as MLflow returns them: the
primary metric, a rule that differs from the study's, failed runs per variant, runs computed
differently, each test held once, and adaptive looks that cannot decide on old pairs."""

import numpy as np
import pandas as pd
import pytest

from latentseg.report.collect import Collected
from latentseg.report.decision import Decision, decision_for
from latentseg.report.render import build
from latentseg.report.writers import verdict_lines

AXIS = "params.model.num_latents"
BASELINE = {"model.num_latents": "16"}


def rows(values: dict[str, list[float]], **tags) -> list[dict]:
    """One run per variant and seed: ``values[variant][seed]``."""
    return [
        {AXIS: v, "params.train.seed": str(s), "metrics.test_miou": x,
         "metrics.test_mdice": x + 0.05, **tags}
        for v, xs in values.items() for s, x in enumerate(xs)
    ]  # fmt: skip


SEEDS = [0.50, 0.55, 0.47, 0.52, 0.58]
CLEAR = {
    "16": SEEDS,
    "4": [x - 0.08 + e for x, e in zip(SEEDS, (0.002, -0.001, 0.0, 0.001, -0.002), strict=True)],
    "8": [x + 0.001 * e for x, e in zip(SEEDS, (1, -2, 0, 1, 1), strict=True)],
}


def report(frame, unfinished=None, decision=None, metric="miou"):
    collected = Collected(pd.DataFrame(frame), {}, [], pd.DataFrame(unfinished or []))
    return build(collected, "rules", metric, BASELINE, decision=decision, figures=False)


def test_each_test_is_held_once_in_the_family():
    """One crossed axis: each main effect is its variant's comparison, the same test; the
    family holds 2 tests, not 4, and each main effect shares its variant's verdict."""
    result = report(rows(CLEAR))
    assert result.family.size == 2
    summary = result.summary.set_index("model.num_latents")
    effects = result.effects.set_index("value")
    for value in ("4", "8"):
        assert effects.loc[value, "verdict"] == summary.loc[value, "verdict"]
        assert effects.loc[value, "diff_ci_low"] == summary.loc[value, "diff_ci_low"]
        assert bool(effects.loc[value, "counted_once"])
    assert summary.loc["4", "verdict"] == "worse" and bool(summary.loc["4", "relevant"])
    assert any("same test as a variant comparison" in note for note in result.notes)
    # per dataset: the effect on each dataset is that dataset's comparison; over both
    # datasets it is a test of its own
    both = rows(CLEAR, **{"params.data.dataset": "shapes"}) + rows(
        CLEAR, **{"params.data.dataset": "digits"}
    )
    result = report(both)
    assert result.family.size == 4 + 2  # 2 variants on 2 datasets, 2 effects over both
    scoped = result.effects[result.effects["scope"] != "all"]
    assert scoped["counted_once"].astype(bool).all()
    assert not result.effects[result.effects["scope"] == "all"]["counted_once"].astype(bool).any()


def test_failed_runs_are_counted_per_variant_and_a_better_verdict_says_they_may_matter():
    """Variant 32 is better on the 3 seeds that finished; it diverged on the other 2, which
    the baseline finished. Its verdict carries a * and the report says why."""
    values = dict(
        CLEAR,
        **{"32": [x + 0.08 + e for x, e in zip(SEEDS[:3], (0.001, -0.002, 0.0), strict=True)]},
    )
    failed = [
        {AXIS: "32", "params.train.seed": str(s), "status": "FAILED",
         "tags.latentseg.error": "NonFiniteLossError: the loss became nan at epoch 2"}
        for s in (3, 4)
    ] + [{AXIS: "8", "params.train.seed": "5", "status": "KILLED"}]  # fmt: skip
    result = report(rows(values), failed)
    row = result.summary.set_index("model.num_latents").loc["32"]
    assert (row["failed"], row["killed"], row["diverged"]) == (2, 0, 2)
    assert row["verdict"] == "better" and bool(row["failures_matter"])
    eight = result.summary.set_index("model.num_latents").loc["8"]
    assert eight["killed"] == 1 and not eight["failures_matter"]  # seed 5: no baseline run
    assert "| num_latents 32 | better (relevant) * |" in result.markdown
    (warning,) = [w for w in result.warnings if w.startswith("* num_latents 32")]
    assert "2 failed (2 diverged) run(s)" in warning and "failures can be the effect" in warning
    assert any(line == f"note: {warning}" for line in verdict_lines(result))


def test_a_rule_or_metric_other_than_the_studys_is_named():
    logged = {"study.report.sesoi": "0.01", "study.report.alpha": "0.05",
              "study.report.correction": "holm", "study.report.metric": "miou"}  # fmt: skip
    same = decision_for({"sesoi": 0.01, "alpha": None, "correction": "holm"}, logged)
    assert same.differs == ()
    other = decision_for({"sesoi": 0.02, "alpha": 0.1, "correction": "bh"}, logged)
    assert other.differs == (
        "--sesoi 0.02 (the study's rule: 0.01)",
        "--alpha 0.1 (the study's rule: 0.05)",
        "--correction bh (the study's rule: holm)",
    )
    result = report(rows(CLEAR), decision=other)
    assert any("differs from the one the study logged: --sesoi 0.02" in w for w in result.warnings)
    assert "**Warning:** The decision rule differs" in result.markdown
    # a secondary metric is labelled as such; the primary is not
    primary = decision_for({}, {**logged, "study.report.metric": "mdice"})
    assert primary.primary == "mdice"
    assert not report(rows(CLEAR), decision=primary, metric="mdice").warnings
    secondary = report(rows(CLEAR), decision=primary, metric="miou")
    assert any(w.startswith("Secondary metric: test_miou") for w in secondary.warnings)


def test_comparisons_that_pair_runs_computed_differently_are_warned_about():
    frame = rows(CLEAR, **{"tags.latentseg.cpu_capability": "AVX512"})
    for run in frame:
        if run[AXIS] == "8" and run["params.train.seed"] in ("0", "1"):
            run["tags.latentseg.cpu_capability"] = "AVX2"
    result = report(frame)
    (warning,) = [w for w in result.warnings if "CPU capability" in w]
    assert "AVX512 on 13 runs, AVX2 on 2 runs" in warning and "1 of 2 comparisons" in warning
    assert not [w for w in report(rows(CLEAR)).warnings if "computed with" in w]


def adaptive_rows():
    """Round 1: seeds 0-2 for every variant. Variant 8 is almost equivalent at the first
    look's tiny alpha; round 2 seeds only variant 4 and the baseline."""
    base = [0.50, 0.55, 0.47, 0.52, 0.58]
    out = []
    for v, offsets in {"16": [0] * 5, "4": [0.001, -0.012, 0.004, -0.006, 0.003],
                       "8": [0.0016, -0.0014, 0.0001]}.items():  # fmt: skip
        for s, off in enumerate(offsets):
            out.append({AXIS: v, "params.train.seed": str(s), "metrics.test_miou": base[s] + off,
                        "tags.latentseg.round": "1" if s < 3 else "2"})  # fmt: skip
    return out


def test_a_comparison_with_no_new_pairs_is_not_decided_at_a_later_look():
    """Variant 8 got no seeds in round 2. At the second look its old pairs would be
    equivalent at alpha_2 (a larger share than round 1's); they stay open instead, with
    the first look's numbers, while still counting in the family."""
    looks = Decision(looks=(3, 5))
    result = report(adaptive_rows(), decision=looks)
    eight = result.summary.set_index("model.num_latents").loc["8"]
    assert eight["verdict"] == "inconclusive" and eight["n_pairs"] == 3
    first = report([r for r in adaptive_rows() if r["tags.latentseg.round"] == "1"], decision=looks)
    assert (
        eight["diff_ci_low"] == first.summary.set_index("model.num_latents").loc["8", "diff_ci_low"]
    )
    assert result.family.size == 2
    # the same runs decided once at the second look's share of alpha: 8 would be equivalent
    second = 0.05 - 0.05 * (3 / 5) ** 3
    fixed = report(adaptive_rows(), decision=Decision(alpha=second))
    assert fixed.family.size == 2
    assert fixed.summary.set_index("model.num_latents").loc["8", "verdict"] == "equivalent"


def test_adaptive_tables_compare_over_shared_seeds():
    """The baseline ran 5 seeds, variant 8 only 3: its paired means are over those 3."""
    result = report(adaptive_rows(), decision=Decision(looks=(3, 5)))
    eight = result.summary.set_index("model.num_latents").loc["8"]
    assert eight["baseline_mean_paired"] == pytest.approx(np.mean([0.50, 0.55, 0.47]))
    assert eight["mean_paired"] - eight["baseline_mean_paired"] == pytest.approx(eight["diff"])
    baseline = result.summary.set_index("model.num_latents").loc["16"]
    assert baseline["mean"] == pytest.approx(np.mean([0.50, 0.55, 0.47, 0.52, 0.58]))
    assert any("Plots of means use the first round's seeds" in n for n in result.notes)


def test_bh_is_refused_with_adaptive_looks():
    from latentseg.errors import ConfigError

    with pytest.raises(ConfigError, match="--correction bh: this study decides after each round"):
        Decision(correction="bh", looks=(3, 6))


def test_a_failed_point_leaves_its_cells_out_of_the_main_effects_not_its_seeds():
    """until: effects, a 3x2 grid, looks at 3 and 5 seeds: point (latents 32, heads 4)
    failed for good in round 2. The effect of 8 latents keeps all 5 seeds over both head
    counts; the effect of heads keeps all 5 seeds over the 2 latent counts where both head
    counts ran (a note says 2 of 3 contexts). The complete-block rule before dropped seeds
    3 and 4 from every main effect."""
    rng = np.random.default_rng(4)
    seed_effect = rng.normal(0, 0.05, 5)
    out = []
    for latents, lift in (("16", 0.0), ("8", -0.03), ("32", 0.01)):
        for heads, more in (("1", 0.0), ("4", 0.02)):
            for s in range(5):
                if (latents, heads) == ("32", "4") and s >= 3:
                    continue  # failed for good in round 2
                out.append(
                    {AXIS: latents, "params.model.num_heads": heads, "params.train.seed": str(s),
                     "metrics.test_miou": 0.5 + lift + more + seed_effect[s] + rng.normal(0, 0.002),
                     "tags.latentseg.round": "1" if s < 3 else "2"}
                )  # fmt: skip
    decision = Decision(looks=(3, 5), until="effects")
    collected = Collected(pd.DataFrame(out), {}, [])
    result = build(collected, "dead", baseline={**BASELINE, "model.num_heads": "1"},
                   decision=decision, figures=False)  # fmt: skip
    effects = result.effects.set_index(["axis", "value"])
    assert effects.loc[("model.num_latents", "8"), "n_pairs"] == 5
    assert effects.loc[("model.num_latents", "8"), "contexts"] == "2 of 2"
    heads = effects.loc[("model.num_heads", "4")]
    assert heads["n_pairs"] == 5 and heads["contexts"] == "2 of 3"
    assert any("model.num_heads 4 vs 1: over 2 of 3 contexts" in n for n in result.notes)
    # until: variants keeps the first round's seeds for main effects, and says so
    result = build(collected, "dead", baseline={**BASELINE, "model.num_heads": "1"},
                   decision=Decision(looks=(3, 5)), figures=False)  # fmt: skip
    assert (result.effects["n_pairs"] == 3).all()
    assert any("Main effects use the first round's seeds" in n for n in result.notes)


def test_equivalence_under_bh_is_marked_exploratory():
    result = report(rows(CLEAR), decision=Decision(correction="bh"))
    eight = result.summary.set_index("model.num_latents").loc["8"]
    assert eight["verdict"] == "equivalent" and bool(eight["exploratory"])
    assert "| num_latents 8 | equivalent (exploratory) |" in result.markdown
    assert "not simultaneous, so equivalent verdicts are exploratory" in result.markdown
    holm = report(rows(CLEAR)).summary.set_index("model.num_latents").loc["8"]
    assert holm["verdict"] == "equivalent" and not holm["exploratory"]


def test_a_variant_is_named_by_what_it_changes_from_the_baseline():
    from latentseg.report.labels import change, label

    keys = ["data.dataset", "model.num_latents", "model.num_heads"]
    row = {"data.dataset": "digits", "model.num_latents": "8", "model.num_heads": "4"}
    baseline = {"data.dataset": "digits", "model.num_latents": "16", "model.num_heads": "4"}
    assert change(row, keys, baseline) == "num_latents 8"  # the dataset is a task, not a change
    assert change(baseline, keys, baseline) == "the baseline"
    assert change({**row, "model.num_heads": "n/a"}, keys, baseline) == "num_latents 8"
    assert label(row, keys, skip=("data.dataset",)) == "num_latents 8, num_heads 4"


def test_the_baseline_is_named_by_its_full_keys_or_all_runs():
    from latentseg.report.labels import baseline_label

    assert baseline_label({"model.num_latents": 16, "data.dataset": "digits"}) == (
        "model.num_latents = 16, data.dataset = digits"
    )
    assert baseline_label({}) == "all runs"  # a single variant


def test_failures_are_worded_with_their_kinds():
    from latentseg.report.notes import _failure_words

    assert _failure_words({"failed": 2, "killed": 1, "diverged": 2}) == (
        "2 failed and 1 killed (2 diverged) run(s)"
    )
    assert _failure_words({"failed": 0, "killed": 1, "diverged": 0}) == "1 killed run(s)"
