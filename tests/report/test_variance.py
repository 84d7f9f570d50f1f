"""Where a comparison's noise comes from: the test-set bootstrap, checked by simulation
against planted variance components."""

import math

import numpy as np
import pytest
import torch

from latentseg.report.variance import (
    METRICS,
    Noise,
    advice,
    bootstrap_differences,
    metric_of,
    noise_of,
)
from latentseg.train.metrics import ConfusionMatrix, metrics_of, per_image_confusion


def test_per_image_matrices_sum_to_the_splits_matrix_and_give_its_metrics():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (5, 9, 7), generator=gen)
    target[0] = 3  # an image with one class only
    target[1, :2] = 255  # ignored pixels
    prediction = torch.randint(0, 4, (5, 9, 7), generator=gen)
    prediction[2] = target[2]
    per_image = per_image_confusion(prediction, target, 4, ignore_index=255)
    assert per_image.shape == (5, 4, 4)
    split = ConfusionMatrix(4, ignore_index=255)
    split.update(prediction, target)
    assert torch.equal(per_image.sum(0), split.matrix)
    assert per_image[1].sum() == 9 * 7 - 2 * 7  # the ignored rows count nowhere
    ours = metric_of(per_image.sum(0).numpy(), "miou")
    for name in METRICS:
        assert metric_of(per_image.sum(0).numpy(), name) == pytest.approx(
            float(metrics_of(split.matrix)[name]), abs=1e-12
        ), name
    # a class absent from an image's prediction and target is left out of its mean
    assert metric_of(per_image[0].numpy(), "miou") == pytest.approx(
        float(metrics_of(per_image[0])["miou"])
    )
    assert 0 < ours < 1


def _confusions(accuracy: np.ndarray, pixels: int = 10_000) -> np.ndarray:
    """Two-class confusion matrices whose pixel accuracy is ``accuracy`` per image."""
    correct = np.rint(np.clip(accuracy, 0, 1) * pixels).astype(np.int64)
    matrices = np.zeros((*accuracy.shape, 2, 2), dtype=np.int64)
    matrices[..., 0, 0] = correct // 2
    matrices[..., 1, 1] = correct - correct // 2
    matrices[..., 0, 1] = pixels - correct
    return matrices


SIGMA_TRAINING, SIGMA_IMAGE, SIGMA_SEED_IMAGE = 0.01, 0.05, 0.05
IMAGES, SEEDS, REPLICATES = 100, 6, 300


def _simulate(rng):
    """One study of a comparison: a fresh test set of IMAGES images, SEEDS seed pairs.
    A seed's difference on image i is 0.02 + a_s + g_i + h_si: a_s the seed's training
    randomness, g_i the image's (shared by every seed), h_si the seed's on that image."""
    difficulty = rng.uniform(0.6, 0.85, IMAGES)  # the same for both sides: pairing cancels it
    image = rng.normal(0, SIGMA_IMAGE, IMAGES)
    pairs, differences = [], []
    for _ in range(SEEDS):
        shared = difficulty + rng.normal(0, 0.01, IMAGES)
        d = 0.02 + rng.normal(0, SIGMA_TRAINING) + image + rng.normal(0, SIGMA_SEED_IMAGE, IMAGES)
        baseline, variant = _confusions(shared), _confusions(shared + d)
        pairs.append((variant, baseline))
        differences.append(
            metric_of(variant.sum(0), "pixel_accuracy")
            - metric_of(baseline.sum(0), "pixel_accuracy")
        )
    return pairs, np.array(differences)


def test_planted_training_and_test_set_components_are_recovered():
    rng = np.random.default_rng(7)
    estimates, means = [], []
    for r in range(REPLICATES):
        pairs, d = _simulate(rng)
        boot = bootstrap_differences(pairs, "pixel_accuracy", draws=200, seed=r)
        estimates.append(noise_of(boot, float(np.var(d, ddof=1))))
        means.append(d.mean())
    truth = {
        "var_test": (SIGMA_IMAGE**2 + SIGMA_SEED_IMAGE**2) / IMAGES,
        "cov_test": SIGMA_IMAGE**2 / IMAGES,
        "var_training": SIGMA_TRAINING**2,
    }
    for name, planted in truth.items():
        values = np.array([getattr(e, name) for e in estimates])
        mc_error = values.std(ddof=1) / math.sqrt(len(values))
        # the bootstrap's variance is the plug-in one: (N - 1) / N of the truth
        assert abs(values.mean() - planted) < 4 * mc_error + 0.02 * planted, (
            name,
            values.mean(),
            planted,
        )
    # the variance of the reported difference (mean over seeds), estimated per study, matches
    # its spread across studies with fresh seeds and fresh test sets
    predicted = np.mean([e.variance() for e in estimates])
    observed = np.var(means, ddof=1)
    relative_mc = math.sqrt(2 / (REPLICATES - 1))
    assert abs(predicted / observed - 1) < 4 * relative_mc, (predicted, observed)
    true_variance = (
        truth["var_training"] / SEEDS + SIGMA_SEED_IMAGE**2 / (SEEDS * IMAGES) + truth["cov_test"]
    )
    assert abs(observed / true_variance - 1) < 4 * relative_mc
    # here the test set is most of it: the advice says so, with the SE 4x the images give
    share = np.mean([e.test_share for e in estimates])
    true_share = 1 - truth["var_training"] / SEEDS / true_variance
    assert share == pytest.approx(true_share, abs=0.05)
    planted = Noise(
        SEEDS,
        truth["var_training"] + SIGMA_SEED_IMAGE**2 / IMAGES,
        truth["var_test"],
        truth["cov_test"],
    )
    assert planted.variance() == pytest.approx(true_variance)
    assert advice(planted).startswith(f"the test set is {true_share:.0%} of it")


def test_without_a_test_set_effect_the_noise_is_the_seeds_own():
    rng = np.random.default_rng(3)
    shares = []
    for r in range(40):
        base = rng.uniform(0.6, 0.85, IMAGES)
        pairs, d = [], []
        for _ in range(SEEDS):
            shift = 0.02 + rng.normal(0, 0.02)  # the whole test set moves together
            variant, baseline = _confusions(base + shift), _confusions(base)
            pairs.append((variant, baseline))
            d.append(shift)
        noise = noise_of(
            bootstrap_differences(pairs, "pixel_accuracy", draws=200, seed=r),
            float(np.var(d, ddof=1)),
        )
        shares.append(noise.test_share)
    assert np.mean(shares) < 0.01
    assert advice(noise).startswith("training randomness is")


def test_more_seeds_and_more_images_cut_their_own_parts():
    noise = Noise(n=4, var_seed=4e-4, var_test=2e-4, cov_test=1e-4)
    assert noise.var_training == pytest.approx(3e-4)
    assert noise.variance() == pytest.approx(3e-4 / 4 + 1e-4 / 4 + 1e-4)
    assert noise.variance(seeds=2) == pytest.approx(3e-4 / 8 + 1e-4 / 8 + 1e-4)
    assert noise.variance(images=4) == pytest.approx(3e-4 / 4 + 1e-4 / 16 + 1e-4 / 4)
    assert noise.test_share == pytest.approx(1 - (3e-4 / 4) / noise.variance())
    with pytest.raises(ValueError, match="2 or more seed pairs"):
        noise_of(np.zeros((10, 1)), 0.0)
