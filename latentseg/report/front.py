"""The report's Pareto front: which objectives it weighs, each point's values over its seeds
and its membership verdict (:mod:`latentseg.report.pareto` decides; this module brings the
runs to it and the verdicts back as a table, ``pareto.csv``).

The objectives are a study's own (``objectives:`` in its spec, a validation metric read on
the test split like every verdict), else those given to ``latentseg report --front``, else
the report's metric against the model's parameters. Pure pandas: the runs come in as a frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from latentseg.errors import ConfigError
from latentseg.report.decision import run_metric
from latentseg.report.labels import label
from latentseg.report.pareto import intervals_needed, membership
from latentseg.report.stats import is_stratum, mean_ci, metric_bounds, pairing
from latentseg.report.verdicts import DEFAULT_SESOI
from latentseg.tracking.logged import COST_METRICS

# A measured cost is compared as a ratio: a difference under 5% does not count.
MEASURED_MARGIN = 0.05


@dataclass(frozen=True)
class Objective:
    metric: str  # the run metric, e.g. test_miou or model_flops_per_image
    direction: str  # maximize | minimize
    margin: float  # differences within it do not count (a log ratio for a measured cost)

    @property
    def column(self) -> str:
        return f"metrics.{self.metric}"

    @property
    def is_cost(self) -> bool:
        return self.metric in COST_METRICS

    @property
    def is_exact(self) -> bool:
        """A cost known exactly from the model (``model_*``: parameters, FLOPs), the same for
        every seed; a measured one (throughput) is noisy, whatever its spread."""
        return self.metric.startswith("model_") and self.metric in COST_METRICS

    def oriented(self, values: pd.Series) -> pd.Series:
        """Larger is better; a measured cost on a log scale (its margin is a ratio); an
        exact cost as it is (any difference counts, 0 included)."""
        values = pd.to_numeric(values, errors="coerce").astype(float)
        if self.is_cost and not self.is_exact:
            values = np.log(values.where(values > 0))
        return values if self.direction == "maximize" else -values


def objectives_for(
    metric: str, sesoi: float, names: tuple[str, ...] | list[str]
) -> list[Objective]:
    """The front's objectives from ``names`` (``--front``, or a study's ``objectives:``; none:
    the model's parameters), each ``METRIC`` or ``METRIC:DIRECTION``, with the report's
    ``metric`` when they name no quality. A quality metric (``val_miou``, ``best_val_miou``)
    is read on the test split, with the report's smallest effect of interest as its margin
    (0.01 for another metric in [0, 1]); a cost is minimized (throughput maximized) unless
    told."""
    parsed = [_parsed(name) for name in (list(names) or ["model_params"])]
    has_quality = any(name not in COST_METRICS for name, _ in parsed)
    objectives: list[Objective] = []
    for name, direction in [*([] if has_quality else [(metric, None)]), *parsed]:
        if name in COST_METRICS:  # an exact cost counts any difference, a measured one 5%
            margin = 0.0 if name.startswith("model_") else math.log1p(MEASURED_MARGIN)
            objective = Objective(name, direction or COST_METRICS[name], margin)
        else:
            column = run_metric(name)
            if column == metric:
                margin = sesoi if sesoi > 0 else 0.0
            else:
                margin = DEFAULT_SESOI if metric_bounds(column) == (0.0, 1.0) else 0.0
            default = "minimize" if "loss" in column else "maximize"
            objective = Objective(column, direction or default, margin)
        if objective.metric not in {o.metric for o in objectives}:
            objectives.append(objective)
    if len(objectives) < 2:
        raise ConfigError(
            f"--front {', '.join(names)}: a front needs a cost or a second metric besides "
            f"{metric}; costs: {', '.join(COST_METRICS)}"
        )
    return objectives


def _parsed(name: str) -> tuple[str, str | None]:
    """``val_miou:maximize`` -> (``val_miou``, ``maximize``); a study's ``best_val_*`` is
    read like its per-epoch metric (validation picks, test scores)."""
    metric, _, direction = name.partition(":")
    if direction and direction not in ("maximize", "minimize"):
        raise ConfigError(f"--front {name}: the direction must be maximize or minimize")
    if metric.startswith("best_val_"):
        metric = metric.removeprefix("best_")
    return metric, direction or None


def front_metric(given: str) -> str:
    """``--front NAME[:DIRECTION]`` checked before any store is opened: a cost every run
    logs, or a metric (``miou``, ``val_loss``, ...) the report reads on the test split."""
    name, _ = _parsed(given)
    if name in COST_METRICS:
        return name
    if not name or name.startswith(("model_", "train_")) or not name.replace("_", "").isalnum():
        raise ConfigError(
            f"--front {name}: not a cost runs log ({', '.join(COST_METRICS)}) nor a metric "
            "such as miou or val_loss"
        )
    return run_metric(name)


def check_logged(runs: pd.DataFrame, objectives: list[Objective]) -> None:
    """Exit 2 (``ConfigError``) for an objective no run logs, naming those they do."""
    for objective in objectives:
        if objective.column not in runs or runs[objective.column].isna().all():
            logged = sorted(
                c.removeprefix("metrics.")
                for c in runs.columns
                if c.startswith("metrics.") and (c.removeprefix("metrics.") in COST_METRICS or c.startswith("metrics.test_"))
            )  # fmt: skip
            raise ConfigError(
                f"--front {objective.metric}: no run logs it; the runs log {', '.join(logged)}"
            )


def front_table(
    runs: pd.DataFrame,
    axes: list[str],
    objectives: list[Objective],
    alpha: float,
    looks: int = 1,
) -> tuple[pd.DataFrame, dict]:
    """One row per point (a variant, on its dataset): its seeds ``n``, each objective's mean
    (and, for a noisy one, a 95% interval of the mean over seeds), its ``membership`` and the
    points shown to dominate it (``dominated_by``). A front per dataset, one family over all
    of them at ``alpha``. Also returns the family: ``intervals``, their ``level``, the
    ``fixed`` objectives (those with no interval) and the ``objectives``."""
    tasks = [a for a in axes if is_stratum(a)]
    fixed = [o for o in objectives if _is_fixed(runs, axes, o)]
    noisy = [o for o in objectives if o not in fixed]
    parts = [part for _, part in runs.groupby(tasks, sort=True)] if tasks else [runs]
    tables = [_points(part, axes, objectives, noisy) for part in parts]
    margins = [o.margin for o in fixed]
    intervals = sum(intervals_needed(_fixed(t, fixed), len(noisy), looks, margins) for t in tables)
    decided = [
        _decide(part, table, axes, fixed, noisy, alpha, looks, intervals)
        for part, table in zip(parts, tables, strict=True)
    ]
    family = {
        "objectives": objectives,
        "intervals": intervals,
        "alpha": alpha,
        "level": 1 - alpha / max(intervals, 1),
        "fixed": [o.metric for o in fixed],
    }
    return pd.concat(decided, ignore_index=True), family


def _points(part: pd.DataFrame, axes: list[str], objectives, noisy) -> pd.DataFrame:
    """One dataset's points: their values and seeds, sorted by their axes."""
    rows = []
    for _, group in part.groupby(list(axes), sort=True, dropna=False) if axes else [((), part)]:
        row = {a.removeprefix("params."): group[a].iloc[0] for a in axes}
        row["n"] = int(group[objectives[0].column].notna().sum())
        for o in objectives:
            mean, _, low, high = mean_ci(pd.to_numeric(group[o.column], errors="coerce").tolist())
            row[o.metric] = mean
            if o in noisy:
                row[f"{o.metric}_ci_low"], row[f"{o.metric}_ci_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)


def _is_fixed(runs: pd.DataFrame, axes: list[str], objective: Objective) -> bool:
    """An exact cost (parameters, FLOPs) that indeed does not vary between the seeds of any
    point; a measured cost never is, even with one seed per point."""
    if not objective.is_exact:
        return False
    values = pd.to_numeric(runs[objective.column], errors="coerce")
    by = [runs[a].map(str) for a in axes] if axes else np.zeros(len(runs))
    spread = values.groupby(by).agg(lambda v: v.max() - v.min())
    return bool((spread.fillna(0) == 0).all())


def _fixed(table: pd.DataFrame, fixed: list[Objective]) -> np.ndarray:
    """Points x fixed objectives, larger is better."""
    if not fixed:
        return np.zeros((len(table), 0))
    return np.column_stack([o.oriented(table[o.metric]).to_numpy(float) for o in fixed])


def _decide(part, table, axes, fixed, noisy, alpha, looks, intervals) -> pd.DataFrame:
    """The membership verdicts of one dataset's points, at the whole family's level."""
    keys = [a.removeprefix("params.") for a in axes]
    variants = [a for a in axes if not is_stratum(a)]
    point = (
        part[variants].map(str).agg("|".join, axis=1)
        if variants
        else pd.Series("", index=part.index)
    )
    order = (
        table[[a.removeprefix("params.") for a in variants]].map(str).agg("|".join, axis=1)
        if variants
        else [""]
    )
    seeds = pairing(part, axes)
    matrices = [
        o.oriented(part[o.column]).groupby([point, seeds]).mean().unstack().reindex(order).to_numpy(float)
        for o in noisy
    ]  # fmt: skip
    decided = membership(
        matrices, _fixed(table, fixed), [o.margin for o in noisy], alpha, looks,
        family=intervals, fixed_eps=[o.margin for o in fixed],
    )  # fmt: skip
    tasks = tuple(k for k in keys if is_stratum(k))
    labels = [label(row, keys, tasks) for _, row in table.iterrows()]
    return table.assign(
        membership=decided.verdict,
        dominated_by=["; ".join(labels[q] for q in by) for by in decided.dominated_by],
    )


def front_findings(front: pd.DataFrame, objectives: list[Objective], keys: list[str]) -> list[str]:
    """One sentence per dataset: the points on the front, dominated (and by which) and open."""
    from latentseg.report.pareto import DOMINATED, INCONCLUSIVE, ON_FRONT

    if front.empty:
        return []
    tasks = [k for k in keys if is_stratum(k)]
    names = " against ".join(o.metric for o in objectives)
    lines = []
    for task, part in front.groupby(tasks, sort=True) if tasks else [((), front)]:
        where = f" on {', '.join(map(str, task))}" if tasks else ""

        def listed(verdict: str, part=part) -> str:
            rows = part[part["membership"] == verdict]
            return (
                "; ".join(
                    label(r, keys, tuple(tasks))
                    + (f" (by {r['dominated_by']})" if verdict == DOMINATED else "")
                    for _, r in rows.iterrows()
                )
                or "none"
            )

        lines.append(
            f"Pareto front{where} ({names}): **on the front**: {listed(ON_FRONT)}; "
            f"**dominated**: {listed(DOMINATED)}; inconclusive: {listed(INCONCLUSIVE)}."
        )
    return lines
