"""Report figures (seaborn, one colour-blind-safe palette, sized to read when printed).

Each function takes the frame of finished runs (``params.*``, ``metrics.*`` columns) and
returns a Figure, or None when the runs do not vary along the axes it needs.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns

from latentseg.report.labels import variant_names

PALETTE = "colorblind"


FEW_SEEDS = 5  # with this many runs per point or fewer, every run is drawn as a dot


def _t_interval(bounds: tuple[float, float] = (-np.inf, np.inf)):
    """The same Student-t 95% interval as the report's tables (not seaborn's bootstrap),
    clipped to the metric's range: an error bar for seaborn's ``errorbar``."""
    from latentseg.report.stats import mean_ci

    return lambda values: mean_ci(list(values), bounds=bounds)[2:]


def _few_seeds(frame: pd.DataFrame, by: list[str]) -> bool:
    by = [b for b in by if b]
    counts = frame.groupby(by, dropna=False).size() if by else pd.Series([len(frame)])
    return bool(counts.max() <= FEW_SEEDS)


LATENTS, HEADS, EXPERTS = (
    "params.model.num_latents",
    "params.model.num_heads",
    "params.model.expert_attention",
)


def _frame(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    frame = runs.copy()
    for axis in (LATENTS, HEADS):
        if axis in frame:
            frame[axis] = pd.to_numeric(frame[axis], errors="coerce")
    frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _varies(runs: pd.DataFrame, *axes: str) -> bool:
    return all(a in runs and runs[a].nunique() > 1 for a in axes)


def _style() -> None:
    sns.set_theme(style="whitegrid", palette=PALETTE, context="paper", font_scale=1.2)


def metric_vs_latents(
    runs: pd.DataFrame, column: str, label: str, bounds=(-np.inf, np.inf)
) -> plt.Figure | None:
    """The metric against the latent count, one line per head count, 95% CI bands over seeds
    (each seed a dot when there are few)."""
    if not _varies(runs, LATENTS):
        return None
    _style()
    frame = _frame(runs, column)
    if EXPERTS in frame:  # latents and heads only matter with expert attention on
        frame = frame[frame[EXPERTS].map(str) == "True"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    hue = HEADS if _varies(frame, HEADS) else None
    sns.lineplot(
        data=frame,
        x=LATENTS,
        y=column,
        hue=hue,
        errorbar=_t_interval(bounds),
        marker="o",
        ax=ax,
        palette=PALETTE if hue else None,
    )
    if _few_seeds(frame, [LATENTS, hue]):
        sns.scatterplot(
            data=frame, x=LATENTS, y=column, hue=hue, ax=ax, palette=PALETTE if hue else None,
            legend=False, s=14, alpha=0.6, color=None if hue else "black",
        )  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(
        sorted(frame[LATENTS].dropna().unique()),
        labels=[str(int(v)) for v in sorted(frame[LATENTS].dropna().unique())],
    )
    ax.set(
        xlabel="latent experts (num_latents)",
        ylabel=label,
        title=f"{label} vs latent count (95% CI over seeds)",
    )
    if hue:
        ax.legend(title="heads")
    fig.tight_layout()
    return fig


def expert_attention_effect(
    runs: pd.DataFrame, column: str, label: str, bounds=(-np.inf, np.inf)
) -> plt.Figure | None:
    """With vs without expert attention, per latent count (bars: mean, whiskers: 95% CI,
    each seed a dot when there are few)."""
    if not _varies(runs, EXPERTS):
        return None
    _style()
    frame = _frame(runs, column)
    frame["expert attention"] = frame[EXPERTS].map(str).map({"True": "on", "False": "off"})
    x = LATENTS if _varies(frame, LATENTS) else None
    if x and LATENTS in frame and frame[LATENTS].isna().any():
        # without experts the latent count is n/a (one model): its bar stands at every count
        counts = sorted(frame[LATENTS].dropna().unique())
        inert = frame[frame[LATENTS].isna()]
        frame = pd.concat(
            [frame[frame[LATENTS].notna()], *(inert.assign(**{LATENTS: c}) for c in counts)]
        )
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sns.barplot(
        data=frame,
        x=x,
        y=column,
        hue="expert attention",
        hue_order=["on", "off"],
        errorbar=_t_interval(bounds),
        ax=ax,
        palette=PALETTE,
    )
    if _few_seeds(frame, [x, "expert attention"]):
        sns.stripplot(
            data=frame, x=x, y=column, hue="expert attention", hue_order=["on", "off"],
            dodge=True, ax=ax, palette="dark:black", size=3, legend=False,
        )  # fmt: skip
    ax.set(
        xlabel="latent experts (num_latents)" if x else "",
        ylabel=label,
        title=f"{label}: with vs without expert attention",
    )
    fig.tight_layout()
    return fig


def latents_heads_heatmap(runs: pd.DataFrame, column: str, label: str) -> plt.Figure | None:
    """Mean metric over latents x heads (expert attention on)."""
    if not _varies(runs, LATENTS, HEADS):
        return None
    _style()
    frame = _frame(runs, column)
    if EXPERTS in frame:
        frame = frame[frame[EXPERTS].map(str) == "True"]
    table = frame.pivot_table(index=HEADS, columns=LATENTS, values=column, aggfunc="mean")
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    sns.heatmap(table, annot=True, fmt=".3f", cmap="viridis", ax=ax, cbar_kws={"label": label})
    ax.set(xlabel="latent experts", ylabel="heads", title=f"mean {label} (expert attention on)")
    fig.tight_layout()
    return fig


def accuracy_vs_cost(summary: pd.DataFrame, axes: list[str], label: str) -> plt.Figure | None:
    """Mean metric against params, FLOPs and time per image (which points are on the front,
    with the seeds' noise, is the front plot's: :func:`front`)."""
    costs = [
        ("params", "parameters"),
        ("flops_per_image", "FLOPs per image"),
        ("seconds_per_image", "training s per image"),
    ]
    frame = summary.copy()
    frame["seconds_per_image"] = 1 / frame["train_images_per_s"]
    costs = [(c, name) for c, name in costs if frame[c].notna().any()]
    if len(frame) < 2 or not costs:
        return None
    _style()
    frame["variant"] = variant_names(frame, axes)
    fig, axs = plt.subplots(1, len(costs), figsize=(5.2 * len(costs), 4.2), squeeze=False)
    for ax, (cost, name) in zip(axs[0], costs, strict=True):
        sns.scatterplot(
            data=frame, x=cost, y="mean", ax=ax, color=sns.color_palette(PALETTE)[0], s=50
        )
        ax.set(xlabel=name, ylabel=label)
    fig.suptitle(f"{label} vs cost")
    fig.tight_layout()
    return fig


MEMBERSHIP_COLOURS = {"on the front": 2, "inconclusive": 1, "dominated": 7}  # palette indices


def front(
    table: pd.DataFrame, objectives: list, keys: list[str], level: float
) -> plt.Figure | None:
    """The Pareto front with its verdicts: each point's quality (the first objective that is
    not a cost) against the first cost, with 95% seed intervals of the means where an objective is noisy, coloured by
    its membership verdict (decided with the family's paired intervals at ``level``, not
    these). Points within the margins of each other can all be on the front, so no line
    joins them. Further objectives are in the table."""
    from latentseg.report.labels import label as point_label
    from latentseg.report.stats import is_stratum

    if table.empty or len(objectives) < 2:
        return None
    _style()
    quality = [o for o in objectives if not o.is_cost]
    y = quality[0] if quality else objectives[0]
    x = next((o for o in objectives if o is not y and o.is_cost), None) or next(
        o for o in objectives if o is not y
    )
    tasks = [k for k in keys if is_stratum(k)]
    parts = list(table.groupby(tasks, sort=True)) if tasks else [((), table)]
    fig, axs = plt.subplots(1, len(parts), figsize=(6.2 * len(parts), 4.6), squeeze=False)
    colours = sns.color_palette(PALETTE)
    for ax, (task, part) in zip(axs[0], parts, strict=True):
        for verdict, index in MEMBERSHIP_COLOURS.items():
            rows = part[part["membership"] == verdict]
            if rows.empty:
                continue
            ax.errorbar(
                rows[x.metric], rows[y.metric], yerr=_bars(rows, y.metric), xerr=_bars(rows, x.metric),
                fmt="o", ms=7, capsize=3, color=colours[index], label=verdict,
            )  # fmt: skip
        for _, row in part.iterrows():
            ax.annotate(
                point_label(row, keys, tuple(tasks)), (row[x.metric], row[y.metric]),
                textcoords="offset points", xytext=(5, 4), fontsize=8,
            )  # fmt: skip
        if x.is_cost and part[x.metric].max() > 10 * part[x.metric].min() > 0:
            ax.set_xscale("log")
        title = f"{', '.join(map(str, task))}: " if tasks else ""
        ax.set(xlabel=f"{x.metric} ({x.direction})", ylabel=f"{y.metric} ({y.direction})")
        ax.set_title(
            f"{title}Pareto front (bars: 95% over seeds; verdicts: paired, {level:.2%})",
            fontsize=10,
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _bars(rows: pd.DataFrame, metric: str):
    """Asymmetric error bars from ``<metric>_ci_low/high``; None for a fixed objective."""
    if f"{metric}_ci_low" not in rows:
        return None
    low = (rows[metric] - rows[f"{metric}_ci_low"]).clip(lower=0).fillna(0)
    high = (rows[f"{metric}_ci_high"] - rows[metric]).clip(lower=0).fillna(0)
    return np.vstack([low.to_numpy(), high.to_numpy()])


def latent_diagnostics(runs: pd.DataFrame, axes: list[str]) -> plt.Figure | None:
    """Dead latents and usage entropy (val, best epoch) per variant."""
    columns = [
        ("metrics.best_val_dead_latents", "dead latents (< 1% of pixels)"),
        ("metrics.best_val_latent_usage_entropy", "latent usage entropy (nats)"),
    ]
    columns = [(c, name) for c, name in columns if c in runs and runs[c].notna().any()]
    if not columns or not axes:
        return None
    _style()
    frame = runs.copy()
    frame["variant"] = variant_names(frame, axes)
    frame = frame.dropna(subset=[c for c, _ in columns])
    if frame.empty:
        return None
    fig, axs = plt.subplots(
        1,
        len(columns),
        figsize=(6 * len(columns), 0.35 * frame["variant"].nunique() + 2),
        squeeze=False,
    )
    for ax, (column, name) in zip(axs[0], columns, strict=True):
        sns.barplot(
            data=frame,
            y="variant",
            x=column,
            errorbar=_t_interval((0.0, np.inf)),  # counts and entropies are >= 0
            ax=ax,
            color=sns.color_palette(PALETTE)[2],
        )
        if _few_seeds(frame, ["variant"]):
            sns.stripplot(data=frame, y="variant", x=column, ax=ax, color="black", size=3)
        ax.set(xlabel=name, ylabel=", ".join(a.removeprefix("params.") for a in axes))
    fig.tight_layout()
    return fig


def router_load(runs: pd.DataFrame, axes: list[str]) -> plt.Figure | None:
    """MoE variants: the share of routed assignments per expert (val, best epoch, mean over
    seeds); a dashed line marks the balanced load 1/E. With the load entropy in the title."""
    loads = sorted(
        (c for c in runs.columns if c.startswith("metrics.best_val_router_load_e")),
        key=lambda c: int(c.rsplit("_e", 1)[1]),
    )
    if not loads:
        return None
    frame = runs.dropna(subset=loads[:1]).copy()
    if frame.empty:
        return None
    _style()
    shown = [a for a in axes if frame[a].map(str).nunique() > 1] or axes
    frame["variant"] = variant_names(frame, shown)
    long = frame.melt(id_vars=["variant"], value_vars=loads, var_name="expert", value_name="load")
    long["expert"] = long["expert"].str.rsplit("_e", n=1).str[1].astype(int)
    long = long.dropna(subset=["load"])
    variants = sorted(long["variant"].unique())
    fig, ax = plt.subplots(
        figsize=(max(6.0, 0.5 * len(loads) * max(1, len(variants)) ** 0.5 + 4), 4.5)
    )
    sns.barplot(data=long, x="expert", y="load", hue="variant", errorbar=None, ax=ax)
    ax.axhline(1 / len(loads), color="black", ls="--", lw=1, label="balanced 1/E")
    entropy = "metrics.best_val_router_entropy"
    if entropy in frame:
        ax.set_title(
            f"router load per expert (val); mean entropy {frame[entropy].mean():.2f} nats "
            f"of {np.log(len(loads)):.2f} when balanced"
        )
    ax.set(xlabel="routed expert", ylabel="share of routed assignments")
    ax.legend(
        fontsize=7,
        title=", ".join(a.removeprefix("params.") for a in shown),
        title_fontsize=7,
        bbox_to_anchor=(1.01, 1),
        loc="upper left",
    )
    fig.tight_layout()
    return fig


def learning_curves(
    histories: pd.DataFrame,
    runs: pd.DataFrame,
    axes: list[str],
    label: str,
    order: list[str],
    bounds=(-np.inf, np.inf),
) -> plt.Figure | None:
    """Per-epoch val metric, mean and 95% CI over seeds (clipped to the metric's range), for
    the variants in ``order``."""
    if histories.empty:
        return None
    _style()
    frame = runs[["run_id", *axes]].copy()
    frame["variant"] = variant_names(frame, axes)
    data = histories.merge(frame[["run_id", "variant"]], on="run_id")
    data = data[data["variant"].isin(order)]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    sns.lineplot(
        data=data,
        x="step",
        y="value",
        hue="variant",
        hue_order=order,
        errorbar=_t_interval(bounds),
        ax=ax,
        palette=PALETTE,
    )
    ax.set(
        xlabel="epoch", ylabel=label, title=f"learning curves ({label}, mean and 95% CI over seeds)"
    )
    ax.legend(title=", ".join(a.removeprefix("params.") for a in axes) or None, fontsize=8)
    fig.tight_layout()
    return fig


VERDICT_COLOURS = {
    "better": "#1a7f37",
    "worse": "#b42318",
    "equivalent": "#1f5fa8",
    "inconclusive": "#8c8c8c",
}


def forest(rows: pd.DataFrame, family, label: str) -> plt.Figure | None:
    """Each compared variant and main effect: its difference from the baseline with the
    adjusted interval behind its verdict (coloured by verdict), and the band of the smallest
    effect of interest around 0."""
    if rows.empty:
        return None
    _style()
    height = 0.32 * len(rows) + 1.6
    shown = rows["shown"] if "shown" in rows else rows["verdict"]  # the verdict in words
    longest = max(len(str(n)) + len(str(v)) for n, v in zip(rows["name"], shown, strict=True))
    fig, ax = plt.subplots(figsize=(6.5 + 0.075 * longest, height))
    positions = np.arange(len(rows))[::-1]
    sesoi = getattr(family, "sesoi", np.nan)
    if sesoi == sesoi:  # not NaN
        ax.axvspan(-sesoi, sesoi, color="#1f5fa8", alpha=0.12, lw=0, label=f"±{sesoi:g} (SESOI)")
    ax.axvline(0, color="black", lw=1)
    effects = (rows["group"] == "main effect").to_numpy()
    if effects.any() and not effects.all():  # a rule between the variants and the main effects
        ax.axhline(positions[effects.argmax()] + 0.5, color="#bbbbbb", lw=1, ls=":")
    for y, (_, row) in zip(positions, rows.iterrows(), strict=True):
        colour = VERDICT_COLOURS.get(row["verdict"], "#8c8c8c")
        if row["diff_ci_low"] == row["diff_ci_low"]:
            ax.plot([row["diff_ci_low"], row["diff_ci_high"]], [y, y], color=colour, lw=2)
        ax.plot(row["diff"], y, "o", color=colour, ms=5)
    ax.set_yticks(
        positions,
        labels=[f"{n}  [{v}]" for n, v in zip(rows["name"], shown, strict=True)],
    )
    for tick, verdict in zip(ax.get_yticklabels(), rows["verdict"], strict=True):
        tick.set_color(VERDICT_COLOURS.get(verdict, "#222222"))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(6))
    level = f"{100 * family.level:.1f}%" if family is not None else "95%"
    ax.set(
        xlabel=f"difference from the baseline ({label}); "
        + (
            "repeated simultaneous intervals, each at its deciding look's level"
            if family is not None and len(family.looks) > 1
            else f"simultaneous {level} intervals"
        ),
        title="verdicts: differences from the baseline",
    )
    if sesoi == sesoi:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    return fig
