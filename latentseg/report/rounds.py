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
    """``new``, except rows that ``previous`` had already decided, which keep their numbers."""
    if previous is None or previous.empty or new.empty:
        return new if previous is None or previous.empty else previous
    index = [k for k in keys if k in new]
    old = previous.set_index(previous[index].map(str).agg("|".join, axis=1))
    out = new.set_index(new[index].map(str).agg("|".join, axis=1))
    settled = old.index[old["verdict"].isin(DECIDED)]
    settled = settled[settled.isin(out.index)]
    for column in old.columns:
        if column in out:
            out.loc[settled, column] = old.loc[settled, column]
    return out.reset_index(drop=True)


def sequential(
    runs: pd.DataFrame,
    axes: Sequence[str],
    planned: Sequence[int],
    alpha: float,
    decide_look: Callable[[pd.DataFrame, pd.DataFrame, float], tuple[list[pd.DataFrame], Family]],
    keys: tuple[list[str], list[str]],
) -> tuple[list[pd.DataFrame], Family, list[dict]]:
    """Decide look by look. ``decide_look(runs, complete_runs, alpha_k)`` gives the
    comparison and effect tables of one look with their verdicts (the fixed-design rule);
    ``keys`` name the rows of each table. Returns the settled tables (with ``decided_round``),
    the family (its size and level as at the last look) and one record per look."""
    rounds = run_rounds(runs)
    taken = int(min(max(rounds.max(initial=1), 1), len(planned)))
    spent = spending(alpha, list(planned))
    tables: list[pd.DataFrame | None] = [None, None]
    history = []
    family = None
    for look in range(1, taken + 1):
        subset = runs[rounds <= look]
        new, family = decide_look(subset, complete_blocks(subset, axes), spent[look - 1])
        for table in new:
            if not table.empty and "verdict" in table:
                fresh = table["verdict"].isin(DECIDED)
                table["decided_round"] = np.where(fresh, look, 0)
        merged = [_merge(old, table, k) for old, table, k in zip(tables, new, keys, strict=True)]
        tables = merged
        verdicts = pd.concat(
            [t["verdict"] for t in merged if t is not None and "verdict" in t], ignore_index=True
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
    return [t if t is not None else pd.DataFrame() for t in tables], family, history
