"""The report's verdicts for adaptive seeds: a look per round, each decided by the fixed rule
at its share of alpha, the first decided verdict kept. Checked against that definition on
simulated adaptive studies (runs frames as MLflow returns them), and the complete-block rule
of the main effects."""

import numpy as np
import pandas as pd
import pytest

from latentseg.report.collect import Collected
from latentseg.report.decision import Decision
from latentseg.report.render import build
from latentseg.report.rounds import complete_blocks
from latentseg.report.stats import apply_verdicts, compare
from latentseg.report.verdicts import spending

LOOKS = (3, 5, 7)
BASELINE = {"model.num_latents": "16"}
AXES = ["params.model.num_latents"]
TRUTH = {"16": 0.0, "4": -0.04, "8": 0.0, "32": 0.004}


def runs_frame(rows) -> Collected:
    frame = pd.DataFrame(rows)
    return Collected(frame, {}, [])


def simulate(rng) -> pd.DataFrame:
    """An adaptive study over num_latents (16 is the baseline), run the way the study runs
    it: round 1 gives every variant the first 3 seeds; each later round gives the next seeds
    to the variants whose comparison the report leaves open, and to the baseline."""
    noise = {(v, s): rng.normal(0, 0.01) for v in TRUTH for s in range(LOOKS[-1])}
    shared = [rng.normal(0, 0.05) for _ in range(LOOKS[-1])]
    rows: list[dict] = []

    def add(variant: str, seeds, round_: int) -> None:
        for s in seeds:
            rows.append(
                {
                    "params.model.num_latents": variant,
                    "params.train.seed": str(s),
                    "metrics.test_miou": 0.5 + TRUTH[variant] + shared[s] + noise[variant, s],
                    "tags.latentseg.round": str(round_),
                }
            )

    for variant in TRUTH:
        add(variant, range(LOOKS[0]), 1)
    for round_ in range(2, len(LOOKS) + 1):
        report = build(runs_frame(rows), "sim", baseline=BASELINE, decision=Decision(looks=LOOKS), figures=False)  # fmt: skip
        summary = report.summary
        still = summary[summary["verdict"] == "inconclusive"]["model.num_latents"].tolist()
        if not still:
            break
        for variant in [*still, "16"]:
            add(variant, range(LOOKS[round_ - 2], LOOKS[round_ - 1]), round_)
    return pd.DataFrame(rows)


@pytest.mark.slow  # twelve simulated adaptive studies, each reported in full: 17 s
def test_adaptive_verdicts_are_the_first_decided_fixed_rule_verdict_across_the_looks():
    """For each comparison, the report's verdict and interval are those of the first look
    whose fixed-rule decision (runs of rounds 1..k, alpha_k) was decided, or the last look's
    when none was; ``decided_round`` names that look."""
    rng = np.random.default_rng(11)
    spent = spending(0.05, list(LOOKS))
    checked = decided = 0
    for _ in range(12):
        runs = simulate(rng)
        adaptive = build(runs_frame(runs), "sim", baseline=BASELINE, decision=Decision(looks=LOOKS), figures=False)  # fmt: skip
        rounds = runs["tags.latentseg.round"].astype(int)
        looks, before = [], None
        for k in range(1, int(rounds.max()) + 1):
            # the fixed rule at alpha_k on rounds 1..k (main effects on the first round's
            # runs); a variant with no new pairs since look k-1 has p = 1 there
            subset = runs[rounds <= k]
            table = compare(subset, AXES, "test_miou", BASELINE, (0.0, 1.0))
            stale = table["n_pairs"].to_numpy() <= (
                before if before is not None else np.full(len(table), -1)
            )
            before = table["n_pairs"].to_numpy()
            # one axis: each main effect is its variant's comparison, held once
            (variants,), _ = apply_verdicts(
                [table.assign(stale=stale)],
                sesoi=0.01, alpha=spent[k - 1], method="holm", bounds=(0.0, 1.0),
            )  # fmt: skip
            looks.append(variants.assign(stale=stale).set_index("model.num_latents"))
        final = adaptive.summary.set_index("model.num_latents")
        # decided verdicts lead the report's verdict table (after the baseline)
        table = adaptive.markdown.split("## Verdicts")[1].split("##")[0]
        shown = [line.split(" | ")[1] for line in table.splitlines() if line.startswith("| num")]
        assert len(shown) == 3 and shown == sorted(shown, key=lambda v: v == "inconclusive"), table
        for variant in ("4", "8", "32"):
            settled = next(
                (k for k, look in enumerate(looks, 1) if look.loc[variant, "verdict"] in ("better", "worse", "equivalent")),
                None,
            )  # fmt: skip
            # an open comparison shows the last look that gave it new pairs
            last = max(k for k, look in enumerate(looks, 1) if not look.loc[variant, "stale"])
            source = looks[(settled or last) - 1].loc[variant]
            row = final.loc[variant]
            assert row["verdict"] == source["verdict"], (variant, settled)
            assert row["decided_round"] == (settled or 0)
            for column in ("diff", "diff_ci_low", "diff_ci_high", "n_pairs"):
                assert row[column] == pytest.approx(source[column]), column
            checked += 1
            decided += settled is not None
    assert decided >= 6 and checked - decided >= 6  # both kinds were seen


def test_main_effects_of_an_adaptive_study_use_complete_seed_blocks_only():
    """A seed that only the open variants and the baseline ran is not a block of the main
    effects: there the effect of an axis would be measured on a few variants only."""
    rows = [
        {"params.model.num_latents": v, "params.train.seed": str(s), "metrics.test_miou": 0.5}
        for v in ("4", "8", "16")
        for s in range(3)
    ] + [
        {"params.model.num_latents": v, "params.train.seed": "3", "metrics.test_miou": 0.5}
        for v in ("4", "16")
    ]
    kept = complete_blocks(pd.DataFrame(rows), ["params.model.num_latents"])
    assert sorted(kept["params.train.seed"].unique()) == ["0", "1", "2"]
    assert len(kept) == 9
    # within a dataset: a block is complete when it holds every variant of its dataset
    rows = [
        {"params.data.dataset": d, "params.model.num_latents": v, "params.train.seed": "0"}
        for d, variants in (("digits", ("4", "16")), ("shapes", ("4", "8", "16")))
        for v in variants
    ] + [
        {"params.data.dataset": "shapes", "params.model.num_latents": "4", "params.train.seed": "1"}
    ]
    kept = complete_blocks(pd.DataFrame(rows), ["params.data.dataset", "params.model.num_latents"])
    assert len(kept) == 5 and set(kept["params.train.seed"]) == {"0"}


def test_the_next_round_seeds_open_comparisons_and_their_baseline_only():
    """After a look: a decided comparison (4 latents, far worse) gets no seeds; an open one
    (8) does, with the baseline; one out of reach of the maximum (64: a difference near 0
    with a spread 5 times the smallest effect of interest, in a family of 5) stops. With ``until: effects``
    every point gets seeds while a main effect is open."""
    from latentseg.report.adaptive import needs
    from latentseg.study.spec import AdaptiveSeeds

    base = [0.51, 0.48, 0.515]
    offsets = {
        "16": [0.0, 0.0, 0.0],
        "4": [-0.0995, -0.1003, -0.0999],
        "8": [0.0010, -0.0008, 0.0004],
        "64": [0.05, -0.05, 0.001],
        # two more far-worse variants: a family of 5 tests (the main effects repeat them)
        "2": [-0.1, -0.1002, -0.0998],
        "1": [-0.2, -0.2003, -0.1998],
    }
    rows = [
        {"params.model.num_latents": v, "params.train.seed": str(s),
         "metrics.test_miou": base[s] + offsets[v][s], "tags.latentseg.round": "1",
         "tags.latentseg.trial_number": str(number)}
        for number, v in enumerate(offsets) for s in range(3)
    ]  # fmt: skip
    runs = pd.DataFrame(rows)
    report = build(runs_frame(runs), "sim", baseline=BASELINE, decision=Decision(looks=(3, 6, 9)), figures=False)  # fmt: skip
    verdicts = report.summary.set_index("model.num_latents")["verdict"]
    assert verdicts["4"] == "worse" and verdicts["8"] == verdicts["64"] == "inconclusive"

    judged = needs(report, runs, AdaptiveSeeds(min=3, max=9))
    seeded = {tuple(n.trials): n.reason for n in judged.needs}
    assert seeded == {
        (2,): "num_latents 8 vs baseline",
        (0,): "baseline (num_latents 16) of 1 open comparison(s)",
    }
    assert judged.open == 1 and judged.decided >= 2  # 4 latents: variant and main effect
    assert report.family.size == 5  # each main effect is its variant's comparison: held once

    everything = needs(report, runs, AdaptiveSeeds(min=3, max=9, until="effects"))
    assert sorted(n.trials[0] for n in everything.needs) == [0, 1, 2, 3, 4, 5]
    assert all(n.reason.startswith("main effect open: ") for n in everything.needs)
