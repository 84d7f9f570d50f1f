"""Every number against a hand computation."""

import math

import pandas as pd
import pytest

from latentseg.report.stats import ablation_axes, compare, mean_ci, summarize

T_975_DF2 = 4.302652729911275  # Student t, 97.5th percentile, 2 degrees of freedom


def runs(rows):
    return pd.DataFrame(
        [
            {
                "params.model.expert_attention": e,
                "params.train.seed": s,
                "params.tracking.experiment": "x",
                "params.model.num_heads": "4",
                "metrics.val_miou": v,
                "metrics.best_epoch": b,
                "wall_time_s": w,
            }
            for e, s, v, b, w in rows
        ]
    )


FRAME = runs(
    [
        ("True", "1", 0.5, 3, 10.0),
        ("True", "2", 0.6, 4, 12.0),
        ("True", "3", 0.7, 5, 14.0),
        ("False", "1", 0.6, 2, 8.0),
        ("False", "2", 0.8, 2, 8.0),
        ("False", "3", 0.7, 2, 8.0),
    ]
)


def test_axes_are_the_params_that_vary_excluding_seed_and_tracking():
    assert ablation_axes(FRAME) == ["params.model.expert_attention"]


def test_mean_ci_is_a_student_t_interval():
    mean, std, low, high = mean_ci([0.5, 0.6, 0.7])
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert mean == pytest.approx(0.6) and std == pytest.approx(0.1)
    assert (low, high) == pytest.approx((0.6 - half, 0.6 + half))
    assert math.isnan(mean_ci([0.4])[2]) and mean_ci([0.4])[0] == 0.4


def test_summary_per_variant():
    table = summarize(FRAME, ["params.model.expert_attention"], "val_miou").set_index(
        "model.expert_attention"
    )
    on = table.loc["True"]
    assert on["n"] == 3 and on["mean"] == pytest.approx(0.6) and on["std"] == pytest.approx(0.1)
    assert on["ci_low"] == pytest.approx(0.6 - T_975_DF2 * 0.1 / math.sqrt(3))
    assert on["best_epoch"] == 4 and on["wall_time_s"] == 12
    assert table.loc["False", "mean"] == pytest.approx(0.7)


def test_paired_comparison_against_the_baseline():
    table = compare(
        FRAME, ["params.model.expert_attention"], "val_miou", {"model.expert_attention": "True"}
    ).set_index("model.expert_attention")
    off = table.loc["False"]
    # seed-paired differences: 0.1, 0.2, 0.0 -> mean 0.1, std 0.1
    assert off["n_pairs"] == 3 and off["diff"] == pytest.approx(0.1)
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert (off["diff_ci95_low"], off["diff_ci95_high"]) == pytest.approx((0.1 - half, 0.1 + half))
    assert off["se"] == pytest.approx(0.1 / math.sqrt(3)) and off["df"] == 2
    t = 0.1 / (0.1 / math.sqrt(3))
    p_t = 2 * (1 - (0.5 + t / (2 * math.sqrt(2 + t * t))))  # closed-form t CDF for 2 df
    assert off["p"] == pytest.approx(p_t)
    # d_z = 1, with Hedges' correction 1 - 3 / (4 * 2 - 1) at 3 pairs
    assert off["hedges_g"] == pytest.approx(4 / 7)
    assert math.isnan(off["wilcoxon_p"])  # 3 pairs: its smallest p is 0.25, it cannot reject
    # the two sides' correlation across seeds: deviations (-.1, .1, 0) and (-.1, 0, .1) -> 0.5,
    # and var(diff) = var(a) + var(b) - 2 r sd(a) sd(b) = .01 + .01 - .01
    assert off["corr"] == pytest.approx(0.5)
    assert off["sd_diff"] ** 2 == pytest.approx(0.01 + 0.01 - 2 * 0.5 * 0.01)
    base = table.loc["True"]
    assert base["is_baseline"] and base["diff"] == 0 and math.isnan(base["p"])
    assert math.isnan(base["corr"])  # the baseline is not compared with itself


def test_a_clear_difference_is_not_within_noise():
    frame = runs(
        [("True", str(s), 0.5 + 0.01 * s, 1, 1.0) for s in range(5)]
        + [("False", str(s), 0.8 + 0.011 * s, 1, 1.0) for s in range(5)]
    )
    off = (
        compare(
            frame, ["params.model.expert_attention"], "val_miou", {"model.expert_attention": "True"}
        )
        .set_index("model.expert_attention")
        .loc["False"]
    )
    assert off["diff_ci95_low"] > 0.25 and off["p"] < 1e-4


def test_axis_effects_average_over_the_other_axes_and_pair_by_seed():
    from latentseg.report.effects import axis_effects

    (row,) = axis_effects(
        FRAME, ["params.model.expert_attention"], "val_miou", {"model.expert_attention": "True"}
    ).to_dict("records")
    assert row["value"] == "False" and row["n_pairs"] == 3 and row["diff"] == pytest.approx(0.1)
    two_axes = runs(
        [
            ("True", "1", 0.5, 1, 1.0),
            ("False", "1", 0.7, 1, 1.0),
            ("True", "2", 0.6, 1, 1.0),
            ("False", "2", 0.9, 1, 1.0),
        ]
    )
    two_axes["params.model.num_heads"] = ["1", "1", "2", "2"]
    two_axes["params.train.seed"] = [
        "1",
        "1",
        "1",
        "1",
    ]  # one seed: heads 1 vs 2 averaged over attention
    effects = axis_effects(
        two_axes,
        ["params.model.expert_attention", "params.model.num_heads"],
        "val_miou",
        {"model.expert_attention": "True", "model.num_heads": "1"},
    )
    heads = effects[effects["axis"] == "model.num_heads"].iloc[0]
    assert (
        heads["diff"] == pytest.approx((0.6 + 0.9) / 2 - (0.5 + 0.7) / 2) and heads["n_pairs"] == 1
    )


def test_without_experts_latents_and_heads_are_na_and_replicates_count_once():
    from latentseg.report.effects import axis_effects
    from latentseg.report.stats import deduplicate, mark_inert

    rows = []
    for experts in ("True", "False"):
        for latents, heads in (("4", "1"), ("4", "2"), ("16", "1"), ("16", "2")):
            for seed, base in (("1", 0.50), ("2", 0.60), ("3", 0.70)):
                on = experts == "True"
                value = base + (0.01 * int(latents) / 4 if on else 0.05)  # off: one model
                rows.append(
                    {
                        "params.model.expert_attention": experts,
                        "params.model.num_latents": latents,
                        "params.model.num_heads": heads,
                        "params.train.seed": seed,
                        "metrics.val_miou": value,
                    }
                )
    frame, note = mark_inert(pd.DataFrame(rows))
    assert "num_heads, num_latents" in note
    frame, merged = deduplicate(frame)
    off = frame[frame["params.model.expert_attention"] == "False"]
    assert len(off) == 3 and set(off["params.model.num_latents"]) == {"n/a"}  # 12 runs -> 3
    assert merged == 9
    axes = ablation_axes(frame)
    table = summarize(frame, axes, "val_miou")
    assert len(table) == 5  # 4 variants with experts + 1 without
    no_expert = table[table["model.expert_attention"] == "False"].iloc[0]
    assert no_expert["n"] == 3 and no_expert["mean"] == pytest.approx(0.65)
    baseline = {"model.expert_attention": "True", "model.num_latents": "16", "model.num_heads": "1"}
    effects = axis_effects(frame, axes, "val_miou", baseline).set_index(["axis", "value"])
    # the latent count's effect is measured with experts on only: 4 vs 16 latents = -0.03
    assert effects.loc[("model.num_latents", "4"), "diff"] == pytest.approx(-0.03)
    assert ("model.num_latents", "n/a") not in effects.index
    # expert attention off vs on: 0.05 against the mean of the with-expert variants (0.025)
    assert effects.loc[("model.expert_attention", "False"), "diff"] == pytest.approx(0.025)


def test_datasets_are_strata_runs_pair_within_a_dataset_and_it_is_not_an_effect():
    """kv_rank=16 is +0.1 on shapes and -0.05 on digits; digits sit 0.5 lower overall. Each
    diff must pair with the baseline of its own dataset and seed."""
    from latentseg.report.effects import axis_effects

    rows = []
    for dataset, offset, effect in (("shapes", 0.6, 0.1), ("digits", 0.1, -0.05)):
        for seed, noise in (("1", 0.0), ("2", 0.02), ("3", -0.01)):
            for rank, bump in (("None", 0.0), ("16", effect)):
                rows.append(
                    {
                        "params.data.dataset": dataset,
                        "params.model.kv_rank": rank,
                        "params.train.seed": seed,
                        "metrics.val_miou": offset + noise + bump,
                    }
                )
    frame = pd.DataFrame(rows)
    axes = ablation_axes(frame)
    assert axes == ["params.data.dataset", "params.model.kv_rank"]
    baseline = {"data.dataset": "shapes", "model.kv_rank": "None"}
    table = compare(frame, axes, "val_miou", baseline).set_index(["data.dataset", "model.kv_rank"])
    assert table.loc[("shapes", "16"), "diff"] == pytest.approx(0.1)
    assert table.loc[("digits", "16"), "diff"] == pytest.approx(-0.05)
    assert table.loc[("digits", "None"), "diff"] == pytest.approx(0.0)  # not 0.1 - 0.6
    assert (
        table.loc[("digits", "None"), "is_baseline"]
        and table.loc[("shapes", "None"), "is_baseline"]
    )
    assert table.loc[("shapes", "16"), "n_pairs"] == 3
    effects = axis_effects(frame, axes, "val_miou", baseline)
    assert list(effects["axis"]) == ["model.kv_rank"]  # the dataset is not an effect
    assert effects.iloc[0]["diff"] == pytest.approx(0.025)  # (0.1 - 0.05) / 2
    assert effects.iloc[0]["n_pairs"] == 6


def test_a_key_that_is_only_na_beside_one_value_is_not_an_axis():
    frame = pd.DataFrame(
        {
            "params.model.moe_top_k": ["n/a", "2", "n/a", "2"],
            "params.model.moe_experts": ["n/a", "8", "n/a", "8"],
            "params.model.latent_depth": ["0", "2", "0", "2"],
            "params.train.seed": ["1", "1", "2", "2"],
            "metrics.val_miou": [0.1, 0.2, 0.1, 0.2],
        }
    )
    assert ablation_axes(frame) == ["params.model.latent_depth"]


def test_an_axis_the_baseline_does_not_use_is_measured_where_it_applies_with_its_cost():
    """MoE only exists at latent depth 2; the tutorial baseline (depth 0) shows n/a there.
    Its effect is MoE 8 vs 0 among the depth-2 runs, with the FLOPs and time ratios."""
    from latentseg.report.effects import axis_effects

    rows = []
    for seed, noise in (("1", 0.0), ("2", 0.01), ("3", -0.01)):
        for depth, experts, value, flops, speed in (
            ("0", "n/a", 0.50, 100.0, 400.0),
            ("2", "0", 0.55, 110.0, 300.0),
            ("2", "8", 0.58, 121.0, 200.0),
        ):
            rows.append(
                {
                    "params.model.latent_depth": depth,
                    "params.model.moe_experts": experts,
                    "params.train.seed": seed,
                    "metrics.val_miou": value + noise,
                    "metrics.model_flops_per_image": flops,
                    "metrics.train_images_per_s": speed,
                }
            )
    frame = pd.DataFrame(rows)
    axes = ablation_axes(frame)
    baseline = {"model.latent_depth": "0", "model.moe_experts": "n/a"}
    effects = axis_effects(frame, axes, "val_miou", baseline).set_index("axis")
    moe = effects.loc["model.moe_experts"]
    assert (moe["value"], moe["baseline_value"]) == ("8", "0")
    assert moe["diff"] == pytest.approx(0.03) and moe["n_pairs"] == 3
    assert moe["flops_ratio"] == pytest.approx(121 / 110)
    assert moe["time_ratio"] == pytest.approx(300 / 200)
    depth = effects.loc["model.latent_depth"]
    assert depth["diff"] == pytest.approx((0.55 + 0.58) / 2 - 0.50)
    assert depth["flops_ratio"] == pytest.approx((110 + 121) / 2 / 100)


def test_a_given_baseline_applies_on_each_dataset():
    from latentseg.errors import ConfigError
    from latentseg.report.render import choose_baseline

    table = pd.DataFrame(
        {
            "data.dataset": ["shapes", "shapes", "digits", "digits"],
            "model.kv_rank": ["None", "16", "None", "16"],
            "mean": [0.5, 0.6, 0.3, 0.2],
        }
    )
    axes = ["params.data.dataset", "params.model.kv_rank"]
    chosen, reason = choose_baseline(table, axes, {"model.kv_rank": "16"})
    assert chosen["model.kv_rank"] == "16" and "on each dataset" in reason
    with pytest.raises(ConfigError, match="a dataset is not a variant"):
        choose_baseline(table, axes, {"data.dataset": "shapes", "model.kv_rank": "16"})
    with pytest.raises(ConfigError, match="matches 0 variants"):
        choose_baseline(table, axes, {"model.kv_rank": "8"})


def test_without_the_tutorial_among_the_runs_the_baseline_is_not_chosen_by_its_score():
    from latentseg.report.render import choose_baseline

    table = pd.DataFrame(
        {
            "model.num_latents": ["4", "8", "16"],
            "model.variant": ["a", "b", "c"],
            "mean": [0.1, 0.9, 0.5],
        }
    )
    axes = ["params.model.num_latents", "params.model.variant"]
    chosen, reason = choose_baseline(table, axes, None)
    # 16 latents is the tutorial's; the best-scoring variant (8 latents) is not picked
    assert chosen == {"model.num_latents": "16", "model.variant": "c"}
    assert "without looking at the metric" in reason


def test_seeds_without_a_partner_are_left_out_of_the_comparison_and_the_pairs_say_so():
    """The baseline ran seeds 1-3, the variant seeds 2-5: only seeds 2 and 3 pair. The
    unpaired runs (baseline seed 1, variant seeds 4 and 5) still count in each variant's own
    summary, but never in the difference: changing their values changes no comparison."""
    from latentseg.report.collect import Collected
    from latentseg.report.render import build

    def frame(unpaired: tuple[float, float, float]):
        rows = [("True", "1", unpaired[0]), ("True", "2", 0.6), ("True", "3", 0.7)]
        rows += [("False", "2", 0.8), ("False", "3", 0.7)]
        rows += [("False", "4", unpaired[1]), ("False", "5", unpaired[2])]
        return runs([(e, s, v, 1, 1.0) for e, s, v in rows])

    axes, baseline = ["params.model.expert_attention"], {"model.expert_attention": "True"}
    tables = [
        compare(frame(unpaired), axes, "val_miou", baseline).set_index("model.expert_attention")
        for unpaired in ((0.5, 0.1, 0.1), (0.9, 0.95, 0.0))
    ]
    pd.testing.assert_frame_equal(tables[0], tables[1])
    off, base = tables[0].loc["False"], tables[0].loc["True"]
    # paired differences 0.2 and 0.0: mean 0.1, sd 0.1414, se 0.1, 1 df; t = 1 on 1 df (a
    # Cauchy variable) exceeds |1| with probability 1/2
    assert off["n_pairs"] == 2 and base["n_pairs"] == 3  # the baseline pairs with itself
    assert off["diff"] == pytest.approx(0.1) and off["se"] == pytest.approx(0.1)
    assert off["df"] == 1 and off["p"] == pytest.approx(0.5)
    summary = summarize(frame((0.5, 0.1, 0.1)), axes, "val_miou")
    summary = summary.set_index("model.expert_attention")
    assert summary.loc["False", "n"] == 4 and summary.loc["True", "n"] == 3
    assert summary.loc["False", "mean"] == pytest.approx(0.425)  # every run of the variant

    scored = frame((0.5, 0.1, 0.1)).rename(columns={"metrics.val_miou": "metrics.test_miou"})
    report = build(Collected(scored, {}, []), "unpaired", baseline=baseline, figures=False)
    row = report.summary.set_index("model.expert_attention").loc["False"]
    assert row["n"] == 4 and row["n_pairs"] == 2
    verdicts = report.markdown.split("## Verdicts")[1].split("##")[0]
    assert "| expert_attention False | inconclusive | +0.1000 " in verdicts
    assert verdicts.splitlines()[2].startswith("| change from the baseline")
    line = next(line for line in verdicts.splitlines() if "expert_attention False" in line)
    header = verdicts.splitlines()[2].split("|")
    assert line.split("|")[header.index(" pairs ")].strip() == "2"  # the pairs, not the 4 runs
    no_partner = compare(
        frame((0.5, 0.1, 0.1)).query("`params.train.seed` in ['1', '4', '5']"),
        axes, "val_miou", baseline,
    ).set_index("model.expert_attention")  # fmt: skip
    assert no_partner.loc["False", "n_pairs"] == 0 and math.isnan(no_partner.loc["False", "p"])
