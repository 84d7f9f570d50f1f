"""A variant in words, built here only: by its value on each axis, or by what it changes
from the baseline; a main effect by the change it measures. Shared by the report's
analysis, its tables, its plots and the adaptive judge."""

from __future__ import annotations

from typing import Any

import pandas as pd

from latentseg.report.stats import NOT_APPLICABLE, is_stratum


def label(row, keys: list[str], skip: tuple[str, ...] = ()) -> str:
    """``num_latents 16, expert_attention True``: a variant in plain words."""
    parts = [f"{k.split('.')[-1]} {row[k]}" for k in keys if k not in skip]
    return ", ".join(parts) or "all runs"


def baseline_label(values: dict[str, Any]) -> str:
    """``model.num_latents = 16, ...``: the baseline by its full keys; an empty one (a single
    variant) is all runs."""
    return ", ".join(f"{k} = {v}" for k, v in values.items()) or "all runs"


def on_dataset(row, keys: list[str]) -> str:
    """`` (on shapes)`` for a variant on one dataset; empty when the dataset does not vary."""
    tasks = [k for k in keys if is_stratum(k)]
    return f" (on {row[tasks[0]]})" if tasks else ""


def change(row, keys: list[str], baseline: dict[str, Any]) -> str:
    """A variant by what it changes from the baseline: ``kv_rank 16, latent_depth 2``."""
    parts = [
        f"{k.split('.')[-1]} {row[k]}"
        for k in keys
        # n/a: a key this variant ignores (num_latents without expert attention) is no change
        if not is_stratum(k) and str(row[k]) not in (str(baseline[k]), NOT_APPLICABLE)
    ]
    return ", ".join(parts) or "the baseline"


def effect_label(row) -> str:
    """A main effect by its change: ``num_latents 32 vs 16``."""
    return f"{row['axis'].split('.')[-1]} {row['value']} vs {row['baseline_value']}"


def variant_names(frame: pd.DataFrame, columns: list[str]) -> pd.Series | str:
    """Each row's variant by its values alone (``16, True``), as plot legends show it: the
    column names stand in the legend's title. ``"all"`` when no column varies."""
    if not columns:
        return "all"
    return frame[columns].map(str).agg(", ".join, axis=1)
