"""A variant in words: by its value on each axis, or by what it changes from the baseline.
Shared by the report's analysis, its writers and the adaptive judge."""

from __future__ import annotations

from typing import Any

from latentseg.report.stats import NOT_APPLICABLE, is_stratum


def label(row, keys: list[str], skip: tuple[str, ...] = ()) -> str:
    """``num_latents 16, expert_attention True``: a variant in plain words."""
    parts = [f"{k.split('.')[-1]} {row[k]}" for k in keys if k not in skip]
    return ", ".join(parts) or "all runs"


def _on(row, keys: list[str]) -> str:
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
