"""Where one configuration's noise comes from, source by source (``latentseg noise``).

Each training source is varied alone over ``levels`` values while the others stay at the
reference seed (one factor at a time, as Bouthillier et al., "Accounting for Variance in
Machine Learning Benchmarks", MLSys 2021, do): ``weights`` (``train.init_seed``), ``order``
(the data order and augmentation, ``train.order_seed``), ``data`` (the data sample,
``data.seed``), and ``all`` (``train.seed``: the weights and the order together, what a
study's seeds vary). The value measured per level is the configuration's score, or with a
compared variant the paired difference (variant minus baseline, the same seeds). The variance
across levels is that source's variance; its ratio to ``all``'s says how much of the seeds'
noise it carries alone. Training is chaotic, so the sources need not add up: each alone can
carry most of the noise. The finite test set is measured apart, by resampling its images
(:mod:`latentseg.report.variance`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

# source -> (what varies, the config key its levels set)
SOURCES = {
    "weights": ("initial weights", "train.init_seed"),
    "order": ("data order and augmentation", "train.order_seed"),
    "data": ("the data sample", "data.seed"),
    "all": ("weights, order and augmentation together (a study's seeds)", "train.seed"),
}


@dataclass(frozen=True)
class SourceNoise:
    source: str
    levels: int
    mean: float
    sd: float

    @property
    def variance(self) -> float:
        return self.sd**2


def source_noise(source: str, values: np.ndarray) -> SourceNoise:
    """The spread of ``values`` (one per level) when only ``source`` varies."""
    values = np.asarray(values, dtype=float)
    sd = float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan
    return SourceNoise(source, len(values), float(np.mean(values)), sd)


def source_table(
    measured: dict[str, np.ndarray], test: tuple[float, float, int] | None
) -> pd.DataFrame:
    """One row per source measured, then the test set's: its variance, SD and share of the
    variance of ``all`` (the seeds' noise; NaN without ``all``). ``test``: the test set's
    variance of one level's value, the part of it every level shares, and the test images;
    or None. The test row's share counts the part that moves from level to level (what the
    seeds' spread holds of it); ``shared_sd`` is the rest, which no number of seeds averages
    away."""
    rows = [source_noise(source, values) for source, values in measured.items()]
    reference = next((r.variance for r in rows if r.source == "all"), math.nan)
    table = [
        {
            "source": r.source,
            "varies": SOURCES[r.source][0],
            "levels": r.levels,
            "mean": r.mean,
            "sd": r.sd,
            "variance": r.variance,
            "of_seed_variance": r.variance / reference if reference > 0 else math.nan,
            "shared_sd": math.nan,
        }
        for r in rows
    ]
    if test is not None:
        variance, shared, images = test
        moving = max(0.0, variance - shared)
        table.append(
            {
                "source": "test",
                "varies": f"the test set's {images} images (bootstrap)",
                "levels": math.nan,
                "mean": math.nan,
                "sd": math.sqrt(variance),
                "variance": variance,
                "of_seed_variance": moving / reference if reference > 0 else math.nan,
                "shared_sd": math.sqrt(max(0.0, shared)),
            }
        )
    return pd.DataFrame(table)


def findings(table: pd.DataFrame) -> list[str]:
    """What the table says, and what would cut the noise, in words and numbers."""
    rows = {row["source"]: row for _, row in table.iterrows()}
    if all(row["sd"] == 0 or math.isnan(row["sd"]) for row in rows.values()):
        return ["No spread: every level gave the same value (a recipe too short to learn?)."]
    lines = []
    if "all" in rows and not math.isnan(rows["all"]["sd"]):
        lines.append(
            f"Seeds (train.seed) move it with SD {rows['all']['sd']:.4f}: a mean over n seeds "
            f"has SD {rows['all']['sd']:.4f}/sqrt(n)."
        )
    training = [
        s for s in ("weights", "order", "data") if s in rows and not math.isnan(rows[s]["sd"])
    ]
    if training:
        top = max(training, key=lambda s: rows[s]["variance"])
        ratio = rows[top]["of_seed_variance"]
        share = f" ({ratio:.0%} of the seeds' variance)" if not math.isnan(ratio) else ""
        lines.append(
            f"The largest training source alone is {SOURCES[top][0]}: SD {rows[top]['sd']:.4f}{share}."
            + (
                " The initial weights carry it: train longer (a recipe whose best epoch is not "
                "its last), or compare variants from shared initial weights (train.init=modules)."
                if top == "weights"
                else " More seeds average it; a larger train split or milder augmentation cut it."
                if top == "order"
                else " A different data sample moves it: fix data.seed between variants (the "
                "default), and more training data cuts it."
            )
        )
    if "test" in rows:
        test = rows["test"]
        lines.append(
            f"The finite test set alone: SD {test['sd']:.4f} per level"
            + (
                f" (the part that moves between levels is {test['of_seed_variance']:.0%} of "
                "the seeds' variance)"
                if not math.isnan(test["of_seed_variance"])
                else ""
            )
            + f"; SD {test['shared_sd']:.4f} of it every level shares, which no number of "
            f"seeds averages away; 4x the test images would halve both."
        )
    return lines


def measure(
    name: str, sources: list[str], axis: str, baseline, variant, store, metric: str = "miou"
) -> tuple[pd.DataFrame, list[str]]:
    """The table of :func:`source_table` from the runs of the ``<name>-<source>`` studies of
    ``latentseg noise`` in ``store``: per level, the configuration's test ``metric``, or the
    paired difference ``variant`` minus ``baseline`` on ``axis``. Returns the table and the
    notes (levels that lack a run, runs without per-image scores)."""
    from latentseg.report.collect import collect, scored_runs

    column = f"metrics.test_{metric}"
    measured: dict[str, np.ndarray] = {}
    notes: list[str] = []
    test = None
    for source in sources:
        study = f"{name}-{source}"
        runs = scored_runs(collect(store, study=study), study, metric).runs
        level = "params.data.seed" if source == "data" else "params.train.seed"
        side = runs[f"params.{axis}"].map(str)
        base = runs[side == str(baseline)].set_index(level)
        if variant is None:
            values = base[column]
            ids = [(run_id, None) for run_id in base["run_id"]]
        else:
            other = runs[side == str(variant)].set_index(level)
            shared = sorted(set(base.index) & set(other.index))
            values = other.loc[shared, column] - base.loc[shared, column]
            ids = [(other.loc[s, "run_id"], base.loc[s, "run_id"]) for s in shared]
            missing = len(set(base.index) ^ set(other.index))
            if missing:
                notes.append(f"{study}: {missing} level(s) have a run on one side only")
        measured[source] = values.to_numpy(float)
        if source == "all":
            test = _test_variance(store, ids, metric, notes)
    return source_table(measured, test), notes


def _test_variance(store, ids, metric: str, notes: list[str]) -> tuple[float, float, int] | None:
    """The test set's variance of one level's value (the mean over the levels of its
    bootstrap variance), from the runs' per-image scores; ``ids``: per level, the run (and
    the baseline's run of a paired difference)."""
    import tempfile

    from latentseg.report.variance import (
        bootstrap_differences,
        bootstrap_scores,
        download_scores,
        noise_of,
    )
    from latentseg.tracking.logged import SCORES_DIR, TEST_SCORES_FILE

    path = f"{SCORES_DIR}/{TEST_SCORES_FILE}"
    wanted = {run_id: path for pair in ids for run_id in pair if run_id is not None}
    with tempfile.TemporaryDirectory() as folder:
        scores = download_scores(store, wanted, folder)
    loaded = [(scores.get(first), scores.get(second)) for first, second in ids]
    paired = bool(ids) and ids[0][1] is not None
    usable = [(a, b) for a, b in loaded if a is not None and (b is not None or not paired)]
    shape = usable[0][0].shape if usable else None
    same = [(a, b) for a, b in usable if a.shape == shape and (b is None or b.shape == shape)]
    if len(same) < len(usable):
        notes.append("the test set's share leaves out runs scored on other test images")
    if len(same) < 2:
        notes.append("the test set's share needs 2 or more runs with per-image scores")
        return None
    if paired:
        draws = bootstrap_differences(same, metric)
    else:
        draws = bootstrap_scores([a for a, _ in same], metric)
    noise = noise_of(draws, 0.0)
    return noise.var_test, noise.cov_test, shape[0]
