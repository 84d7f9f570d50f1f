"""Verdicts of a study with adaptive seeds: one look per round of seeds.

Each seed run of such a study carries the round it ran in (``tags.latentseg.round``). The
look after round k sees the runs of rounds 1..k and decides the whole family at that look's
share of alpha (:func:`latentseg.report.verdicts.spending`); a comparison keeps the verdict of
the first look that decided it, with that look's numbers. Main effects and interactions use
only complete seed blocks (a seed that every variant of its dataset ran): a later round seeds
only the open comparisons' points, and a block holding a few of them would estimate a
different effect. Pure pandas: the runs come in as a frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from latentseg.report.stats import Family, is_stratum, pairing
from latentseg.report.verdicts import DECIDED, spending

ROUND = "tags.latentseg.round"


def run_rounds(runs: pd.DataFrame) -> np.ndarray:
    """The round of each run (1 where the tag is missing: a fixed design's runs)."""
    if ROUND not in runs:
        return np.ones(len(runs), dtype=int)
    return pd.to_numeric(runs[ROUND], errors="coerce").fillna(1).astype(int).to_numpy()


def complete_blocks(runs: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """The runs of seed blocks that hold every variant of their dataset."""
    if runs.empty:
        return runs
    variant_axes = [a for a in axes if not is_stratum(a)]
    strata = [a for a in axes if is_stratum(a)]
    variant = (
        runs[variant_axes].map(str).agg("|".join, axis=1)
        if variant_axes
        else pd.Series("", index=runs.index)
    )
    stratum = (
        runs[strata].map(str).agg("|".join, axis=1) if strata else pd.Series("", index=runs.index)
    )
    block = pairing(runs, axes)
    wanted = variant.groupby(stratum).nunique()
    held = variant.groupby(block).nunique()
    complete = held[held.to_numpy() == wanted[stratum.groupby(block).first()].to_numpy()].index
    return runs[block.isin(complete)]


def _merge(previous: pd.DataFrame | None, new: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``new``, except rows that ``previous`` had already decided, and rows with no new pairs
    at this look (``stale``), which keep the numbers of the look before."""
    if previous is None or previous.empty or new.empty:
        return new if previous is None or previous.empty else previous
    index = [k for k in keys if k in new]
    old = previous.set_index(previous[index].map(str).agg("|".join, axis=1))
    out = new.set_index(new[index].map(str).agg("|".join, axis=1))
    settled = old.index[old["verdict"].isin(DECIDED)]
    if "stale" in out:
        settled = settled.union(out.index[out["stale"].astype(bool)])
    settled = settled[settled.isin(out.index) & settled.isin(old.index)]
    for column in old.columns:
        if column in out and column != "stale":
            out[column] = out[column].astype(object) if old[column].dtype == object else out[column]
            out.loc[settled, column] = old.loc[settled, column]
    return out.reset_index(drop=True)


def _mark_stale(previous: pd.DataFrame | None, new: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``stale``: the rows whose pairs did not grow since the look before (a comparison
    whose variant got no seeds this round: decided, out of reach, pruned or failed)."""
    new = new.copy()
    new["stale"] = False
    if previous is None or previous.empty or new.empty or "n_pairs" not in new:
        return new
    index = [k for k in keys if k in new]
    before = previous.set_index(previous[index].map(str).agg("|".join, axis=1))["n_pairs"]
    key = new[index].map(str).agg("|".join, axis=1)
    seen = key.isin(before.index).to_numpy()
    pairs_before = np.full(len(new), -1.0)
    pairs_before[seen] = before.reindex(key[seen]).to_numpy(float)
    new["stale"] = seen & (new["n_pairs"].to_numpy(float) <= pairs_before)
    return new


def effect_runs(runs: pd.DataFrame, rounds: np.ndarray, until: str) -> pd.DataFrame:
    """The runs main effects are measured on. ``until: effects`` seeds every point that is
    still eligible each round, so every round's runs count (a pruned or failed point is
    missing from its later seeds, and the effects leave its cells out). ``until:
    variants`` seeds only the open comparisons' points and the baseline after round 1: a
    later seed covers a few points that earlier verdicts chose, so main effects keep the
    first round's runs (the same grid in every block)."""
    return runs if until == "effects" else runs[rounds == 1]


def sequential(
    runs: pd.DataFrame,
    axes: Sequence[str],
    planned: Sequence[int],
    alpha: float,
    tables_at: Callable[[pd.DataFrame, pd.DataFrame], list[pd.DataFrame]],
    decide: Callable[[list[pd.DataFrame], float, float], tuple[list[pd.DataFrame], Family]],
    keys: tuple[list[str], list[str]],
    until: str = "variants",
) -> tuple[list[pd.DataFrame], Family, list[dict]]:
    """Decide look by look. ``tables_at(runs, effect_runs)`` gives the comparison and effect
    tables of one look (before verdicts); ``decide(tables, alpha_k, planning_alpha)`` decides
    them by the fixed-design rule; ``keys`` name the rows of each table. A row with no new
    pairs at a look stays in the family with p = 1 and keeps its earlier numbers. Returns the
    settled tables (with ``decided_round``), the family (its size and level as at the last
    look) and one record per look."""
    rounds = run_rounds(runs)
    taken = int(min(max(rounds.max(initial=1), 1), len(planned)))
    spent = spending(alpha, list(planned))
    tables: list[pd.DataFrame | None] = [None, None]
    raw_before: list[pd.DataFrame | None] = [None, None]
    history = []
    family = None
    for look in range(1, taken + 1):
        subset = runs[rounds <= look]
        raw = tables_at(subset, effect_runs(subset, rounds[rounds <= look], until))
        raw = [
            _mark_stale(old, table, k) if look > 1 else table
            for old, table, k in zip(raw_before, raw, keys, strict=True)
        ]
        raw_before = raw
        new, family = decide(raw, spent[look - 1], spent[-1])
        for table in new:
            if not table.empty and "verdict" in table:
                fresh = table["verdict"].isin(DECIDED)
                table["decided_round"] = np.where(fresh, look, 0)
        merged = [_merge(old, table, k) for old, table, k in zip(tables, new, keys, strict=True)]
        tables = merged
        verdicts = pd.concat(  # one per test: a repeated test (counted_once) is counted once
            [
                t.loc[
                    ~t.get("counted_once", pd.Series(False, index=t.index)).astype(bool), "verdict"
                ]
                for t in merged
                if t is not None and "verdict" in t
            ],
            ignore_index=True,
        )
        history.append(
            {
                "round": look,
                "seeds": planned[look - 1],
                "alpha": spent[look - 1],
                "open": int((verdicts == "inconclusive").sum()),
                "decided": int(verdicts.isin(DECIDED).sum()),
            }
        )
    assert family is not None
    family = Family(
        family.sesoi, alpha, family.method, family.size, family.level,
        tuple(planned), tuple(spent), taken,
    )  # fmt: skip
    tables = [t.drop(columns="stale") if t is not None and "stale" in t else t for t in tables]
    return [t if t is not None else pd.DataFrame() for t in tables], family, history
