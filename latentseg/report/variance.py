"""Where the noise of a comparison comes from: training randomness against the finite test set.

A seed's paired difference ``d_s`` (variant minus baseline, same seed, same test images) is the
difference the two trained models would show on all images like the test set's, plus the test
set's error in measuring it. Each run logs its test images' confusion matrices
(``scores/test_per_image.npz``), so the report resamples the test images (a bootstrap, the
same resample for every run of a comparison) and splits the variance:

- ``var_test``: the test set's variance of one seed's difference (the mean over seeds of the
  bootstrap variance of ``d_s``);
- ``cov_test``: the part of it that every seed shares (the mean bootstrap covariance between
  two seeds' differences: the same images are hard or easy for both); more seeds do not
  average it away, more test images do;
- ``var_training``: what the seeds' own randomness adds (initial weights, data order and
  augmentation): ``sd_diff**2 - (var_test - cov_test)``, the spread across seeds beyond what
  the test set explains.

The reported difference (the mean over ``n`` seeds) then has variance
``var_training / n + (var_test - cov_test) / n + cov_test``: seeds cut the first two terms,
test images (``m`` times as many) cut the last two by ``m``. The paired t-test of the verdicts
sees the first two only: it answers for this test set; ``cov_test`` is what a new test set of
the same size would move the difference by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Metrics that the per-image confusion matrices give back exactly (test_<name>).
METRICS = ("miou", "mdice", "pixel_accuracy")
DRAWS = 1000  # bootstrap resamples: Monte-Carlo error of a variance about 4.5% (sqrt(2/1000))
SEED = 20261207  # the resamples are seeded: a report is the same each time it is built


def metric_of(matrices: np.ndarray, name: str) -> np.ndarray:
    """``name`` (mIoU, mean Dice, pixel accuracy) of confusion matrices ``[..., C, C]``, as
    :func:`latentseg.train.metrics.metrics_of` computes it: classes absent from both the
    prediction and the target are left out of the means."""
    m = matrices.astype(np.float64)
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    fp = m.sum(-2) - tp
    fn = m.sum(-1) - tp
    union = tp + fp + fn
    if name == "pixel_accuracy":
        total = m.sum((-2, -1))
        return np.where(total > 0, tp.sum(-1) / np.maximum(total, 1), np.nan)
    present = union > 0
    if name == "miou":
        per_class = tp / np.maximum(union, 1)
    elif name == "mdice":
        per_class = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    else:
        raise ValueError(f"no per-image form of {name!r}; one of {', '.join(METRICS)}")
    counted = present.sum(-1)
    return np.where(
        counted > 0, np.where(present, per_class, 0).sum(-1) / np.maximum(counted, 1), np.nan
    )


def bootstrap_scores(
    matrices: Sequence[np.ndarray], metric: str, draws: int = DRAWS, seed: int = SEED
) -> np.ndarray:
    """``[draws, n]``: each run's ``metric`` on ``draws`` resamples of the test images (with
    replacement), the same resample for every run. ``matrices``: per run, its per-image
    confusion matrices ``[N, C, C]`` on the same N test images."""
    images = matrices[0].shape[0]
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(images, np.full(images, 1.0 / images), size=draws).astype(np.float64)
    out = np.empty((draws, len(matrices)))
    for i, matrix in enumerate(matrices):
        classes = matrix.shape[-1]
        sums = weights @ matrix.reshape(images, -1).astype(np.float64)
        out[:, i] = metric_of(sums.reshape(draws, classes, classes), metric)
    return out


def bootstrap_differences(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    metric: str,
    draws: int = DRAWS,
    seed: int = SEED,
) -> np.ndarray:
    """``[draws, n]``: each seed's difference (variant minus baseline) on ``draws``
    resamples of the test images, the same resample for every seed and both sides.
    ``pairs``: per seed, the variant's and the baseline's per-image confusion matrices
    ``[N, C, C]`` on the same N test images."""
    variants = bootstrap_scores([v for v, _ in pairs], metric, draws, seed)
    return variants - bootstrap_scores([b for _, b in pairs], metric, draws, seed)


@dataclass(frozen=True)
class Noise:
    """The variance of a comparison's paired differences by source (see the module's doc)."""

    n: int  # seed pairs
    var_seed: float  # sd_diff ** 2: the spread of one seed's difference across seeds
    var_test: float  # the test set's variance of one seed's difference
    cov_test: float  # the part of it every seed shares

    @property
    def var_training(self) -> float:
        return max(0.0, self.var_seed - max(0.0, self.var_test - self.cov_test))

    def variance(self, seeds: float = 1.0, images: float = 1.0) -> float:
        """The variance of the mean difference with ``seeds`` times the seeds and ``images``
        times the test images."""
        n = self.n * seeds
        independent = max(0.0, self.var_test - self.cov_test)
        return self.var_training / n + independent / (n * images) + self.cov_test / images

    @property
    def test_share(self) -> float:
        """The test set's share of the variance of the reported difference."""
        total = self.variance()
        return 1 - self.var_training / self.n / total if total > 0 else math.nan

    def se(self, seeds: float = 1.0, images: float = 1.0) -> float:
        return math.sqrt(self.variance(seeds, images))


def noise_of(differences: np.ndarray, var_seed: float) -> Noise:
    """:class:`Noise` from :func:`bootstrap_differences` and the seeds' ``sd_diff ** 2``."""
    n = differences.shape[1]
    if n < 2:
        raise ValueError("the noise of a comparison needs 2 or more seed pairs")
    covariance = np.cov(differences, rowvar=False)
    var_test = float(np.mean(np.diag(covariance)))
    cov_test = float((covariance.sum() - np.trace(covariance)) / (n * (n - 1)))
    return Noise(n, var_seed, var_test, cov_test)


def advice(noise: Noise) -> str:
    """What would cut this comparison's noise, in words and numbers."""
    share = noise.test_share
    se = noise.se()
    if math.isnan(share) or se == 0:
        return "no spread to split"
    more_images, more_seeds = noise.se(images=4), noise.se(seeds=4)
    if share >= 0.5:
        return (
            f"the test set is {share:.0%} of it: 4x the test images would take the SE from "
            f"{se:.4f} to {more_images:.4f} (4x the seeds: {more_seeds:.4f})"
        )
    return (
        f"training randomness is {1 - share:.0%} of it: 4x the seeds would take the SE from "
        f"{se:.4f} to {more_seeds:.4f} (4x the test images: {more_images:.4f}); longer "
        "training, or modules shared between variants (train.init=modules), cut it at its source"
    )


def noise_table(
    runs, axes: list[str], baseline: dict, column: str, store, draws: int = DRAWS
) -> tuple[pd.DataFrame, int]:
    """Per compared variant (2 or more seed pairs with per-image scores): the noise of its
    paired differences split by source (:class:`Noise`) and what would cut it; and the count
    of compared runs that logged no per-image scores (older runs). Empty for a metric the
    scores cannot give back (:data:`METRICS`)."""
    import tempfile

    from latentseg.report.stats import baseline_mask, pairing

    metric = column.removeprefix("test_")
    if not column.startswith("test_") or metric not in METRICS or runs.empty:
        return pd.DataFrame(), 0
    keys = [a.removeprefix("params.") for a in axes]
    pairs = pairing(runs, axes)
    is_base = baseline_mask(runs, axes, baseline)

    def run_ids(frame) -> pd.Series:  # pair -> run id (the first of any replicates)
        return (
            frame.assign(_pair=pairs[frame.index])
            .drop_duplicates("_pair")
            .set_index("_pair")["run_id"]
        )

    base_ids = run_ids(runs[is_base])
    tag = "tags.latentseg.test_scores"  # runs that log their scores say where
    scored = runs.set_index("run_id")[tag].dropna() if tag in runs else pd.Series(dtype=str)
    comparisons = [
        (key if isinstance(key, tuple) else (key,), run_ids(group))
        for key, group in runs[~is_base].groupby(list(axes), dropna=False, sort=True)
    ]
    wanted = {
        run_id
        for _, ids in comparisons
        for pair in set(ids.index) & set(base_ids.index)
        for run_id in (ids[pair], base_ids[pair])
    }
    with tempfile.TemporaryDirectory() as folder:
        loaded = download_scores(store, {r: scored[r] for r in wanted if r in scored.index}, folder)
    rows = []
    for key, ids in comparisons:
        matched = []
        for pair in sorted(set(ids.index) & set(base_ids.index)):
            variant, base = loaded.get(ids[pair]), loaded.get(base_ids[pair])
            if variant is not None and base is not None and variant.shape == base.shape:
                matched.append((variant, base))
        if len(matched) < 2:
            continue
        d = np.array(
            [metric_of(v.sum(0), metric) - metric_of(b.sum(0), metric) for v, b in matched]
        )
        noise = noise_of(bootstrap_differences(matched, metric, draws), float(np.var(d, ddof=1)))
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "n_pairs": noise.n,
                "test_images": matched[0][0].shape[0],
                "sd_diff": math.sqrt(noise.var_seed),
                "var_training": noise.var_training,
                "var_test": noise.var_test,
                "cov_test": noise.cov_test,
                "test_share": noise.test_share,
                "se": noise.se(),
                "se_4x_seeds": noise.se(seeds=4),
                "se_4x_test_images": noise.se(images=4),
                "advice": advice(noise),
            }
        )
    missing = len(wanted) - sum(value is not None for value in loaded.values())
    return pd.DataFrame(rows), missing


def download_scores(store, paths: dict[str, str], folder: str) -> dict[str, np.ndarray | None]:
    """Each run's per-image confusion matrices (run id -> artifact path, e.g. its
    ``latentseg.test_scores`` tag), fetched concurrently; None where the artifact is
    missing."""
    from concurrent.futures import ThreadPoolExecutor

    def fetch(item: tuple[str, str]) -> tuple[str, np.ndarray | None]:
        run_id, path = item
        local = store.download_artifacts(run_id, [path], f"{folder}/{run_id}")
        return run_id, (np.load(local[0])["confusion"] if local else None)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(pool.map(fetch, paths.items()))
