"""The Pareto front's membership verdicts, measured by simulation against planted truth.

Each simulated study has a few points (variants) with a known quality and cost, run with
``n`` seeds: a run's quality is its point's true value + the seed's effect (shared by every
point, which pairing removes) + the run's own noise; its throughput, a measured cost, is
noisy too; its parameter count is fixed. The truth (which point truly dominates which, with
the margins) is computed from the planted values, and every verdict is checked against it.
The seeded generator makes every rate a fixed number; the bounds allow three Monte-Carlo
standard errors. ``pytest tests/report/test_pareto.py -s`` prints the measured rates.
"""

import math

import numpy as np
import pandas as pd
import pytest

from latentseg.report.front import MEASURED_MARGIN, Objective, front_table, objectives_for
from latentseg.report.pareto import (
    DOMINATED,
    INCONCLUSIVE,
    ON_FRONT,
    membership,
    shown_dominance,
)

ALPHA = 0.05
EPS = 0.01  # the quality's margin: the report's smallest effect of interest
NOISE_SD = 0.02
SEED_SD = 0.05
STUDIES = 2000


def mc_bound(rate: float, studies: int = STUDIES) -> float:
    return rate + 3 * math.sqrt(rate * (1 - rate) / studies)


def truly_dominates(q: int, p: int, means: np.ndarray, fixed: np.ndarray, eps) -> bool:
    """The definition, on true values (larger is better): no worse everywhere, better once."""
    d = means[q] - means[p]
    return bool(
        np.all(fixed[q] >= fixed[p])
        and np.all(d >= -eps)
        and (np.any(fixed[q] > fixed[p]) or np.any(d > eps))
    )


def truth(means: np.ndarray, fixed: np.ndarray, eps) -> np.ndarray:
    count = len(means)
    return np.array(
        [
            DOMINATED
            if any(truly_dominates(q, p, means, fixed, eps) for q in range(count) if q != p)
            else ON_FRONT
            for p in range(count)
        ],
        dtype=object,
    )


def simulate(rng, means: np.ndarray, n: int, sds) -> list[np.ndarray]:
    """Per noisy objective, points x seeds: the true value + the seed's effect + noise."""
    out = []
    for j, sd in enumerate(sds):
        seed = rng.normal(0.0, SEED_SD, n)
        out.append(means[:, j][:, None] + seed[None, :] + rng.normal(0.0, sd, (len(means), n)))
    return out


def errors(rng, means, fixed, eps, n, sds, alpha=ALPHA, studies=STUDIES):
    """Per study: whether any claim was false (a ``dominated`` point shown dominated by a point
    that does not truly dominate it, or a point ``on the front`` that truly is dominated), any
    false ``dominated`` claim, and how many verdicts were decided."""
    eps = np.asarray(eps, float)
    true_front = truth(means, fixed, eps)
    any_false, false_dominated, decided = 0, 0, 0
    for _ in range(studies):
        result = membership(simulate(rng, means, n, sds), fixed, eps, alpha)
        wrong_claim = any(
            not truly_dominates(q, p, means, fixed, eps)
            for p, by in enumerate(result.dominated_by)
            for q in by
        )
        wrong_front = bool(np.any((result.verdict == ON_FRONT) & (true_front == DOMINATED)))
        false_dominated += wrong_claim
        any_false += wrong_claim or wrong_front
        decided += int(np.sum(result.verdict != INCONCLUSIVE))
    return any_false / studies, false_dominated / studies, decided / (studies * len(means))


# Five points, costlier ones better by just more than the margin at each step: every point
# is truly on the front, and each cheaper neighbour sits just past the margin of dominating.
STEP = EPS + 0.001
BOUNDARY = (
    np.array([[0.70 + STEP * k] for k in range(5)]),
    -np.arange(1.0, 6.0)[:, None],  # parameters: minimized, so negated
)


def test_no_point_is_falsely_called_dominated_or_on_the_front_in_more_than_alpha_of_studies():
    rng = np.random.default_rng(0)
    means, fixed = BOUNDARY
    any_false, false_dominated, _ = errors(rng, means, fixed, [EPS], n=10, sds=[NOISE_SD])
    print(
        f"\nboundary front, 10 seeds: any false claim {any_false:.4f}, false dominated {false_dominated:.4f}"
    )
    assert false_dominated <= mc_bound(ALPHA)
    assert any_false <= mc_bound(ALPHA)


def test_unadjusted_intervals_on_the_same_front_would_break_the_promise():
    """The boundary front is a hard case: with a 95% interval per pair instead of the family's,
    false ``dominated`` verdicts exceed alpha. The simulation above can therefore fail."""
    rng = np.random.default_rng(1)
    means, fixed = BOUNDARY
    pairs = 10  # 5 points, one noisy objective: 10 intervals
    _, false_dominated, _ = errors(
        rng, means, fixed, [EPS], n=10, sds=[NOISE_SD], alpha=ALPHA * pairs, studies=1000
    )
    print(f"\nboundary front, unadjusted: false dominated {false_dominated:.4f}")
    assert false_dominated > ALPHA


def test_a_measured_cost_with_its_noise_keeps_the_error_control():
    """Quality and throughput both noisy (a log ratio with a 5% margin), parameters fixed:
    two points of equal size whose throughputs differ by just over the margin, one of them
    better in quality by just under it; a third point smaller and worse."""
    rng = np.random.default_rng(2)
    margin = math.log1p(MEASURED_MARGIN)
    means = np.array(
        [
            [0.80, math.log(100.0)],
            [0.80 + EPS - 0.001, math.log(100.0) - margin - 0.002],
            [0.70, math.log(130.0)],
        ]
    )
    fixed = -np.array([[2.0], [2.0], [1.0]])
    any_false, false_dominated, _ = errors(
        rng, means, fixed, [EPS, margin], n=10, sds=[NOISE_SD, 0.03]
    )
    print(
        f"\ntwo noisy objectives: any false claim {any_false:.4f}, false dominated {false_dominated:.4f}"
    )
    assert any_false <= mc_bound(ALPHA)


def test_a_clear_front_is_decided_in_most_studies():
    """Power: a small and a large point on the front; a larger one no better than the large
    one and an equal-sized one much worse, both dominated, decided at 20 seeds (the run noise
    of a recipe with common random numbers, 0.007)."""
    rng = np.random.default_rng(3)
    means = np.array([[0.70], [0.80], [0.80], [0.60]])
    fixed = -np.array([[1.0], [2.0], [3.0], [2.0]])
    expected = truth(means, fixed, np.array([EPS]))
    assert expected.tolist() == [ON_FRONT, ON_FRONT, DOMINATED, DOMINATED]
    right = 0
    for _ in range(500):
        result = membership(simulate(rng, means, 20, [0.007]), fixed, [EPS], ALPHA)
        right += result.verdict.tolist() == expected.tolist()
    print(f"\nclear front, 20 seeds: all four verdicts right in {right / 500:.3f}")
    assert right / 500 >= 0.8


@pytest.mark.parametrize(
    ("fixed_q", "fixed_p", "low", "high", "expected"),
    [
        ([-1.0], [-2.0], [-0.005], [0.004], (True, False)),  # cheaper, equivalent quality
        ([-1.0], [-2.0], [-0.02], [0.004], (False, False)),  # cheaper, maybe worse by > eps
        ([-1.0], [-2.0], [-0.05], [-0.02], (False, True)),  # cheaper, worse by > eps
        ([-3.0], [-2.0], [0.5], [0.6], (False, True)),  # costlier: never dominates
        ([-2.0], [-2.0], [0.02], [0.03], (True, False)),  # same cost, better by > eps
        ([-2.0], [-2.0], [-0.004], [0.008], (False, True)),  # same cost, equivalent
        ([-2.0], [-2.0], [0.005], [0.03], (False, False)),  # same cost, better by how much?
    ],
)
def test_dominance_is_shown_or_ruled_out_from_the_intervals_and_the_margin(
    fixed_q, fixed_p, low, high, expected
):
    assert shown_dominance(fixed_q, fixed_p, low, high, [EPS]) == expected


def runs_frame(rng, values: dict[tuple, tuple[float, int, float]], seeds: int) -> pd.DataFrame:
    """MLflow-shaped runs: per (dataset, num_latents) the true quality, params, throughput."""
    rows = []
    for seed in range(seeds):
        shared = rng.normal(0, SEED_SD)
        for (dataset, latents), (quality, params, speed) in values.items():
            rows.append(
                {
                    "params.data.dataset": dataset,
                    "params.model.num_latents": str(latents),
                    "params.train.seed": str(seed),
                    "metrics.test_miou": quality + shared + rng.normal(0, 0.005),
                    "metrics.model_params": float(params),
                    "metrics.train_images_per_s": speed * math.exp(rng.normal(0, 0.01)),
                }
            )
    return pd.DataFrame(rows)


def test_the_report_front_has_one_verdict_per_point_on_each_dataset_and_one_family():
    rng = np.random.default_rng(4)
    values = {
        ("shapes", 8): (0.80, 1000, 300.0),
        ("shapes", 16): (0.80, 2000, 200.0),  # as good, twice the size: dominated by 8
        ("shapes", 32): (0.90, 4000, 100.0),  # better, larger: on the front
        ("stripes", 8): (0.60, 1000, 300.0),
        ("stripes", 16): (0.75, 2000, 200.0),
        ("stripes", 32): (0.75, 4000, 100.0),  # no better than 16, larger: dominated
    }
    runs = runs_frame(rng, values, seeds=12)
    axes = ["params.data.dataset", "params.model.num_latents"]
    objectives = [
        Objective("test_miou", "maximize", EPS),
        Objective("model_params", "minimize", math.log1p(MEASURED_MARGIN)),
    ]
    table, family = front_table(runs, axes, objectives, ALPHA)
    verdicts = {
        (r["data.dataset"], r["model.num_latents"]): r["membership"] for _, r in table.iterrows()
    }
    assert verdicts == {
        ("shapes", "8"): ON_FRONT,
        ("shapes", "16"): DOMINATED,
        ("shapes", "32"): ON_FRONT,
        ("stripes", "8"): ON_FRONT,
        ("stripes", "16"): ON_FRONT,
        ("stripes", "32"): DOMINATED,
    }
    by = dict(
        zip(table["model.num_latents"] + table["data.dataset"], table["dominated_by"], strict=True)
    )
    assert by["16shapes"] == "num_latents 8"
    assert by["32stripes"] == "num_latents 16"
    # parameters do not vary by seed: no interval; one family of 3 + 3 pairs, one objective each
    assert family["fixed"] == ["model_params"] and family["intervals"] == 6
    assert "model_params_ci_low" not in table and table["test_miou_ci_low"].notna().all()
    assert family["level"] == pytest.approx(1 - ALPHA / 6)


def test_a_measured_cost_carries_an_interval_and_widens_the_family():
    rng = np.random.default_rng(5)
    values = {("shapes", 8): (0.80, 1000, 300.0), ("shapes", 16): (0.80, 1000, 200.0)}
    runs = runs_frame(rng, values, seeds=12)
    axes = ["params.model.num_latents"]
    objectives = [
        Objective("test_miou", "maximize", EPS),
        Objective("train_images_per_s", "maximize", math.log1p(MEASURED_MARGIN)),
    ]
    table, family = front_table(runs, axes, objectives, ALPHA)
    assert family["fixed"] == [] and family["intervals"] == 2
    assert table["train_images_per_s_ci_low"].notna().all()
    # as good and 1.5x faster at the same size: 8 latents dominates 16
    assert table.set_index("model.num_latents")["membership"].to_dict() == {
        "8": ON_FRONT,
        "16": DOMINATED,
    }


def test_the_front_weighs_the_study_objectives_else_those_asked_else_the_metric_against_size():
    from latentseg.errors import ConfigError
    from latentseg.report.decision import study_objectives
    from latentseg.report.front import front_metric, objectives_for

    logged = '[{"metric": "val_miou", "direction": null}, {"metric": "model_flops_per_image", "direction": null}]'
    names = study_objectives({"study.objectives": logged})
    assert names == ("val_miou", "model_flops_per_image")
    assert objectives_for("test_miou", EPS, names) == [
        Objective("test_miou", "maximize", EPS),  # validation picked, test scores
        Objective("model_flops_per_image", "minimize", 0.0),  # exact: any difference counts
    ]
    assert objectives_for("test_miou", EPS, ()) == [
        Objective("test_miou", "maximize", EPS),
        Objective("model_params", "minimize", 0.0),
    ]
    assert objectives_for("test_miou", EPS, ["train_images_per_s"])[1] == Objective(
        "train_images_per_s",
        "maximize",
        math.log1p(MEASURED_MARGIN),  # measured: 5%
    )
    assert [o.metric for o in objectives_for("test_miou", EPS, ["train_images_per_s"])] == [
        "test_miou",
        "train_images_per_s",
    ]
    assert objectives_for("test_miou", EPS, ["val_loss", "model_params"])[0] == Objective(
        "test_loss", "minimize", 0.0
    )
    with pytest.raises(ConfigError, match="--front model_flops: not a cost runs log"):
        front_metric("model_flops")
    with pytest.raises(ConfigError, match="a front needs a cost or a second metric"):
        objectives_for("test_miou", EPS, ["miou"])


def test_an_exact_cost_counts_any_difference_a_measured_one_five_percent():
    """8 latents against 16 differ by 512 of 228,000 parameters, exactly: with mIoU shown
    equivalent, the smaller dominates. Throughputs within 5% of each other are a tie."""
    rng = np.random.default_rng(6)
    values = {
        ("shapes", 8): (0.684, 227_428, 300.0),
        ("shapes", 16): (0.689, 227_940, 300.0),
        ("shapes", 32): (0.640, 228_964, 300.0),  # larger and worse by the margin
    }
    runs = runs_frame(rng, values, seeds=15)
    margin = math.log1p(MEASURED_MARGIN)
    objectives = objectives_for("test_miou", EPS, ["model_params"])
    table, family = front_table(runs, ["params.model.num_latents"], objectives, ALPHA)
    assert table.set_index("model.num_latents")["membership"].to_dict() == {
        "8": ON_FRONT,
        "16": DOMINATED,
        "32": DOMINATED,
    }
    assert family["objectives"][1] == Objective("model_params", "minimize", 0.0)
    # throughput: 300 against 290 images/s is within 5%, a tie; quality decides nothing
    values = {("shapes", 8): (0.684, 1000, 300.0), ("shapes", 16): (0.686, 1000, 290.0)}
    runs = runs_frame(rng, values, seeds=15)
    objectives = [
        Objective("test_miou", "maximize", EPS),
        Objective("train_images_per_s", "maximize", margin),
    ]
    table, _ = front_table(runs, ["params.model.num_latents"], objectives, ALPHA)
    assert set(table["membership"]) == {ON_FRONT}


def test_a_zero_cost_counts_a_missing_one_decides_nothing_and_no_spread_is_no_certainty():
    """A model without expert attention has 0 KV activations: fewer than any, not unknown.
    A point whose cost no run logged can be neither shown dominated through it nor shown on
    the front. Two seeds whose differences happen not to vary give no interval at all."""
    means = np.array([[0.70], [0.70]])
    noisy = [means + np.array([[0.01, 0.02, 0.03, 0.04]] * 2) + [[0.0] * 4, [0.001] * 4]]
    # identical spread: the paired differences do not vary
    result = membership(noisy, -np.array([[0.0], [5.0]]), [EPS], ALPHA)
    assert result.verdict.tolist() == [
        ON_FRONT,
        INCONCLUSIVE,
    ]  # the cheaper: nothing can dominate it
    rng = np.random.default_rng(7)
    values = {("shapes", 0): (0.70, 0, 300.0), ("shapes", 1): (0.70, 1000, 300.0)}
    runs = runs_frame(rng, values, seeds=15).rename(
        columns={"metrics.model_params": "metrics.model_kv_activations_per_image"}
    )
    objectives = [
        Objective("test_miou", "maximize", EPS),
        Objective("model_kv_activations_per_image", "minimize", math.log1p(MEASURED_MARGIN)),
    ]
    table, _ = front_table(runs, ["params.model.num_latents"], objectives, ALPHA)
    assert table.set_index("model.num_latents")["membership"].to_dict() == {
        "0": ON_FRONT,
        "1": DOMINATED,
    }
    runs.loc[runs["params.model.num_latents"] == "0", "metrics.model_kv_activations_per_image"] = (
        np.nan
    )
    table, _ = front_table(runs, ["params.model.num_latents"], objectives, ALPHA)
    assert set(table["membership"]) == {INCONCLUSIVE}


def test_a_measured_cost_is_never_exact_even_with_one_seed_per_point():
    rng = np.random.default_rng(8)
    values = {("shapes", 8): (0.70, 1000, 100.0), ("shapes", 16): (0.70, 1000, 99.5)}
    runs = runs_frame(rng, values, seeds=1)
    objectives = [
        Objective("test_miou", "maximize", EPS),
        Objective("train_images_per_s", "maximize", math.log1p(MEASURED_MARGIN)),
    ]
    table, family = front_table(runs, ["params.model.num_latents"], objectives, ALPHA)
    assert family["fixed"] == [] and set(table["membership"]) == {INCONCLUSIVE}


def test_the_front_plot_puts_quality_on_y_and_colours_each_verdict():
    from latentseg.report import plots

    rng = np.random.default_rng(9)
    values = {("shapes", 8): (0.80, 1000, 300.0), ("shapes", 16): (0.80, 2000, 200.0)}
    runs = runs_frame(rng, values, seeds=8)
    objectives = [  # a cost first: the plot still puts the quality on y
        Objective("model_params", "minimize", 0.0),
        Objective("test_miou", "maximize", EPS),
    ]
    table, family = front_table(runs, ["params.model.num_latents"], objectives, ALPHA)
    figure = plots.front(table, objectives, ["model.num_latents"], family["level"])
    (axis,) = figure.axes
    assert axis.get_ylabel() == "test_miou (maximize)"
    assert axis.get_xlabel() == "model_params (minimize)"
    assert {t.get_text() for t in axis.get_legend().get_texts()} == set(table["membership"])
