"""An ablation report: ``summary.csv``, ``report.md`` (with ``plots/*.png``) and a
self-contained ``report.html`` (images embedded, sortable tables, no external fetch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from latentseg.config import ModelConfig
from latentseg.errors import ConfigError
from latentseg.io import atomic_write_bytes
from latentseg.report.collect import Collected
from latentseg.report.stats import (
    NOT_APPLICABLE,
    ablation_axes,
    axis_effects,
    compare,
    is_stratum,
    mark_inert,
    mean_ci,
    summarize,
)


@dataclass
class Report:
    name: str
    metric: str
    axes: list[str]
    baseline: dict[str, Any]
    baseline_reason: str
    summary: pd.DataFrame  # per variant: statistics and the comparison with the baseline
    markdown: str
    figures: dict[str, Any]  # name -> matplotlib Figure
    notes: list[str]  # left-out runs, the negative control
    images: dict[str, bytes] = field(default_factory=dict)  # name -> PNG bytes from MLflow


def run_metric(metric: str) -> str:
    """A per-epoch ``val_x`` is compared at each run's best epoch (``best_val_x``)."""
    return f"best_{metric}" if metric.startswith("val_") else metric


def choose_baseline(
    table: pd.DataFrame, axes: list[str], given: dict[str, Any] | None
) -> tuple[dict[str, Any], str]:
    keys = [a.removeprefix("params.") for a in axes]
    if given:
        unknown = sorted(set(given) - set(keys))
        if unknown:
            raise ConfigError(
                f"--baseline {unknown[0]}: not an ablation axis here; axes: {', '.join(keys) or '(none)'}"
            )
        tasks = [k for k in keys if is_stratum(k)]
        if set(given) & set(tasks):
            raise ConfigError(
                f"--baseline {sorted(set(given) & set(tasks))[0]}: a dataset is not a variant; "
                "each variant is compared with the baseline on the same dataset"
            )
        rows = table[
            [all(str(row[k]) == str(given[k]) for k in given) for _, row in table.iterrows()]
        ]
        per_task = rows.groupby(tasks).size() if tasks else pd.Series([len(rows)])
        if rows.empty or (per_task != 1).any():
            variant_axes = [k for k in keys if k not in tasks]
            raise ConfigError(
                f"--baseline {given}: matches {len(rows)} variants; give a value for each axis: {', '.join(variant_axes)}"
            )
        return {k: rows.iloc[0][k] for k in keys}, "given with --baseline" + (
            " (on each dataset)" if tasks else ""
        )
    tutorial = ModelConfig()
    variant_keys = [k for k in keys if not is_stratum(k)]
    if variant_keys and all(
        k.startswith("model.") and hasattr(tutorial, k.removeprefix("model.")) for k in variant_keys
    ):
        wanted = {k: getattr(tutorial, k.removeprefix("model.")) for k in variant_keys}
        for _, row in table.iterrows():
            if all(str(row[k]) in (str(wanted[k]), NOT_APPLICABLE) for k in variant_keys):
                return {k: row[k] for k in keys}, (
                    "the tutorial's configuration (seed)"
                    + (" on each dataset" if len(variant_keys) < len(keys) else "")
                )
    best = table.sort_values("mean", ascending=False).iloc[0]
    return {k: best[k] for k in keys}, "the best variant (no tutorial configuration among the runs)"


MAX_CURVES = 8  # learning curves of the best variants (and the baseline), readable in one plot
CURVE_SEEDS = 20  # runs per variant whose metric history is fetched for the curves


def build(
    collected: Collected,
    name: str,
    metric: str = "val_miou",
    baseline: dict[str, Any] | None = None,
    client=None,
) -> Report:
    """The report's numbers and figures. With an MLflow ``client`` it also draws learning
    curves from the metric histories and shows the best run's attention maps and, for a
    study, the parameter importances."""
    runs = collected.runs
    if runs.empty:
        raise ConfigError(
            f"'{name}' has no finished runs to report on. {collected.left_out_line()}"
        )
    column = run_metric(metric)
    if f"metrics.{column}" not in runs:
        raise ConfigError(f"--metric {metric}: the runs report no {column}")
    runs, inert_note = mark_inert(runs)
    axes = ablation_axes(runs)
    table = summarize(runs, axes, column)
    chosen, reason = choose_baseline(table, axes, baseline)
    keys = [a.removeprefix("params.") for a in axes]
    if axes:
        table = table.merge(compare(runs, axes, column, chosen), on=keys, how="left")
    control = negative_control(runs)
    notes = [
        collected.left_out_line(),
        *([control] if control else []),
        *([inert_note] if inert_note else []),
    ]
    figures = _figures(runs, table, axes, keys, column, metric)
    images: dict[str, bytes] = {}
    if client is not None:
        figures.update(_curves(client, runs, table, axes, keys, metric, chosen))
        images = _run_images(client, runs, column, collected)
    markdown = _markdown(name, metric, column, collected, keys, table, chosen, reason)
    findings = _findings(runs, axes, keys, column, table, chosen)
    notes += findings
    markdown += "\n## Findings\n\n" + "\n".join(f"- {line}" for line in findings) + "\n"
    if control:
        markdown += "\n" + control + "\n"
    if inert_note:
        markdown += "\n" + inert_note + "\n"
    shown = [*figures, *images]
    if shown:
        markdown += "\n## Plots\n\n" + "\n\n".join(f"![{n}](plots/{n}.png)" for n in shown) + "\n"
    return Report(name, metric, keys, chosen, reason, table, markdown, figures, notes, images)


def _findings(runs, axes, keys, column, table, baseline) -> list[str]:
    """One sentence per axis effect (with its CI) and the variants on the Pareto front."""
    from latentseg.report.plots import pareto_front

    lines = []
    strata = [a for a in axes if is_stratum(a)]
    scopes = [("", runs)]
    for stratum in strata:  # the effects on each task too, not only averaged over tasks
        for value in sorted(runs[stratum].map(str).unique()):
            scopes.append((f"On {value}: ", runs[runs[stratum].map(str) == value]))
    for prefix, subset in scopes if axes else []:
        for _, row in axis_effects(subset, axes, column, baseline).iterrows():
            verdict = (
                "within noise"
                if row["within_noise"]
                else ("better" if row["diff"] > 0 else "worse")
            )
            lines.append(
                f"{prefix}`{row['axis']}` = {row['value']} instead of {row['baseline_value']}: {column} {row['diff']:+.4f} "
                f"(95% CI [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}], {int(row['n_pairs'])} seed pairs, averaged over the other axes): {verdict}"
                + _cost(row)
                + "."
            )
    task_keys = [a.removeprefix("params.") for a in strata]
    groups = table.groupby(task_keys, sort=True) if task_keys else [((), table)]
    for task, part in groups:  # a front per task: params and metric compare within one
        if len(part) < 2 or not part["params"].notna().all():
            continue
        front = part[pareto_front(part, "params", "mean")].sort_values("params")
        names = "; ".join(
            ", ".join(f"{k}={r[k]}" for k in keys if k not in task_keys)
            + f" ({int(r['params']):,} params, {r['mean']:.4f})"
            for _, r in front.iterrows()
        )
        where = f" on {', '.join(map(str, task))}" if task_keys else ""
        lines.append(f"Pareto front{where} (fewest parameters for the metric): {names}.")
    return lines


def _curves(client, runs, table, axes, keys, metric, baseline) -> dict[str, Any]:
    from latentseg.report import plots
    from latentseg.report.collect import metric_histories

    per_epoch = metric.removeprefix("best_") if metric.startswith("best_val_") else metric
    if not per_epoch.startswith("val_"):
        return {}
    variants = table.sort_values("mean", ascending=False)
    label = lambda row: ", ".join(str(row[k]) for k in keys) if keys else "all"  # noqa: E731
    order = [label(row) for _, row in variants.head(MAX_CURVES).iterrows()]
    base = ", ".join(str(baseline[k]) for k in keys) if keys else "all"
    if base not in order:
        order.append(base)
    labelled = runs.assign(variant=runs[axes].map(str).agg(", ".join, axis=1) if axes else "all")
    # At most CURVE_SEEDS runs per variant: the curves stay cheap for studies of thousands of runs.
    chosen = (
        labelled[labelled["variant"].isin(order)].groupby("variant", sort=False).head(CURVE_SEEDS)
    )
    histories = metric_histories(client, chosen["run_id"].tolist(), per_epoch)
    figure = plots.learning_curves(histories, runs, axes, per_epoch.replace("_", " "), order)
    return {"learning_curves": figure} if figure is not None else {}


def _run_images(client, runs, column, collected) -> dict[str, bytes]:
    """The best run's attention maps (at its best epoch) and, for a study, Optuna's
    parameter-importance plots from its latest parent run."""
    import tempfile

    from latentseg.report.collect import download_artifacts

    images: dict[str, bytes] = {}
    best = runs.sort_values(f"metrics.{column}", ascending=False).iloc[0]
    with tempfile.TemporaryDirectory() as tmp:
        listed = [
            a.path
            for a in client.list_artifacts(best["run_id"], "images")
            if a.path.endswith(".png") and "compressed" not in a.path
        ]
        epoch = int(best.get("metrics.best_epoch", 0) or 0)
        for key in ("predictions", "latent_attention", "expert_assignment"):
            candidates = [p for p in listed if p.split("/")[-1].startswith(f"{key}+step+")]
            steps = {p: int(p.split("+step+")[1].split("+")[0]) for p in candidates}
            if steps:
                chosen = min(steps, key=lambda p: (steps[p] != epoch, -steps[p]))
                for path in download_artifacts(client, best["run_id"], [chosen], tmp):
                    images[f"best_run_{key}"] = Path(path).read_bytes()
        study = best.get("tags.latentseg.study")
        if isinstance(study, str) and study:
            parents = client.search_runs(
                collected.experiment_ids,
                filter_string=f"tags.`latentseg.study` = '{study}' and tags.`latentseg.run_type` = 'study' and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if parents:
                paths = [
                    a.path
                    for a in client.list_artifacts(parents[0].info.run_id, "plots")
                    if a.path.startswith("plots/param_importances")
                ]
                for path in download_artifacts(client, parents[0].info.run_id, paths, tmp):
                    images[Path(path).stem] = Path(path).read_bytes()
    return images


def _cost(row) -> str:
    """``; FLOPs x1.05, training time per image x1.31`` (what the change costs)."""
    parts = [
        f"{name} x{row[key]:.2f}"
        for key, name in (("flops_ratio", "FLOPs"), ("time_ratio", "training time per image"))
        if key in row and not math.isnan(row[key])
    ]
    return "; " + ", ".join(parts) if parts else ""


def _figures(runs, table, axes, keys, column, metric) -> dict[str, Any]:
    from latentseg.report import plots

    label = metric.removeprefix("val_").removeprefix("best_val_")
    label = f"val {label}" if metric.startswith(("val_", "best_val_")) else metric
    made = {
        "metric_vs_latents": plots.metric_vs_latents(runs, f"metrics.{column}", label),
        "expert_attention": plots.expert_attention_effect(runs, f"metrics.{column}", label),
        "latents_heads_heatmap": plots.latents_heads_heatmap(runs, f"metrics.{column}", label),
        "accuracy_vs_cost": plots.accuracy_vs_cost(table, keys, label),
        "latent_diagnostics": plots.latent_diagnostics(runs, axes),
        "router_load": plots.router_load(runs, axes),
    }
    return {name: fig for name, fig in made.items() if fig is not None}


CHANCE_TOLERANCE = 0.02  # pixel accuracy within this of 1/num_classes counts as chance


def negative_control(runs: pd.DataFrame) -> str | None:
    """For runs on ``noise`` data (random labels): is val pixel accuracy at chance?"""
    column, dataset = "metrics.best_val_pixel_accuracy", "params.data.dataset"
    if dataset not in runs or column not in runs:
        return None
    noise = runs[runs[dataset] == "noise"]
    if noise.empty:
        return None
    classes = pd.to_numeric(noise["params.model.num_classes"], errors="coerce").dropna().unique()
    if len(classes) != 1:
        return "Negative control (noise data): runs with different class counts; not checked."
    chance = 1 / float(classes[0])
    mean, _, low, high = mean_ci(noise[column].tolist())
    at_chance = abs(mean - chance) <= CHANCE_TOLERANCE or (
        not math.isnan(low) and low <= chance <= high
    )
    verdict = (
        "at chance, as it must be"
        if at_chance
        else "NOT at chance: the model learns random labels, so something leaks (check the data and the split)"
    )
    return (
        f"Negative control (noise data, {len(noise)} runs): val pixel accuracy {mean:.4f} "
        f"(95% CI [{_fmt(low)}, {_fmt(high)}]) against chance {chance:.4f}: {verdict}."
    )


def _verdict(row) -> str:
    """baseline / within noise / better / worse, for one row of the comparison."""
    if row.get("is_baseline"):
        return "baseline"
    if row.get("within_noise", True):
        return "within noise"
    return "better" if row["diff"] > 0 else "worse"


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _markdown(name, metric, column, collected, keys, table, baseline, reason) -> str:
    lines = [
        f"# Ablation report: {name}",
        "",
        f"Metric: `{column}` (each run's `{metric}` at its best epoch)."
        if column != metric
        else f"Metric: `{metric}`.",
        "",
        collected.left_out_line(),
        "",
    ]
    lines += [
        f"Ablation axes (params that vary): {', '.join(f'`{k}`' for k in keys) or 'none'}.",
        f"Baseline: { {k: v for k, v in baseline.items() if not is_stratum(k)} } — {reason}.",
        "",
    ]
    header = [
        *keys,
        "n",
        "mean",
        "95% CI",
        "diff vs baseline",
        "95% CI of diff",
        "paired t p",
        "Wilcoxon p",
        "d_z",
        "verdict",
        "params",
        "GFLOP/img",
        "wall s",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.sort_values("mean", ascending=False).iterrows():
        verdict = _verdict(row)
        cells = [
            *(str(row[k]) for k in keys),
            str(int(row["n"])),
            _fmt(row["mean"]),
            f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]",
        ]
        cells += [
            _fmt(row.get("diff", math.nan)),
            f"[{_fmt(row.get('diff_ci_low', math.nan))}, {_fmt(row.get('diff_ci_high', math.nan))}]",
        ]
        cells += [
            _fmt(row.get("t_test_p", math.nan), 3),
            _fmt(row.get("wilcoxon_p", math.nan), 3),
            _fmt(row.get("effect_size_dz", math.nan), 2),
            verdict,
        ]
        cells += [
            _fmt(row["params"], 0),
            _fmt(row["flops_per_image"] / 1e9, 3),
            _fmt(row["wall_time_s"], 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "CIs are Student-t 95% intervals over seeds. Differences pair each variant's run with the "
        "baseline's run of the same seed; the tests are the paired t-test and the Wilcoxon signed-rank "
        "test on those differences, d_z is their mean over their standard deviation. A difference "
        "whose CI includes 0 is marked *within noise*.",
        "",
    ]
    return "\n".join(lines)


def write(report: Report, out_dir: str | Path) -> list[Path]:
    """``report.md``, ``report.html``, ``summary.csv`` and ``plots/*.png`` in ``out_dir``
    (written atomically); returns the paths of the three documents."""
    import base64
    import io

    import matplotlib.pyplot as plt

    out = Path(out_dir)
    try:
        (out / "plots").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"-o {out}: cannot create the report folder: {exc.strerror}") from None
    images: dict[str, bytes] = {}
    for name, fig in report.figures.items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        images[name] = buffer.getvalue()
    images.update(report.images)
    for name, data in images.items():
        atomic_write_bytes(out / "plots" / f"{name}.png", data)
    csv = atomic_write_bytes(out / "summary.csv", report.summary.to_csv(index=False).encode())
    md = atomic_write_bytes(out / "report.md", report.markdown.encode())
    embedded = {name: base64.b64encode(data).decode() for name, data in images.items()}
    html = atomic_write_bytes(out / "report.html", _html(report, embedded).encode())
    return [md, csv, html]


_SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.from(body.rows), ascending = th.dataset.order !== 'asc';
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      var nx = parseFloat(x), ny = parseFloat(y);
      var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return ascending ? cmp : -cmp;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    table.querySelectorAll('th').forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = ascending ? 'asc' : 'desc';
  });
});
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[data-order="asc"]::after { content: " \\25B2"; } th[data-order="desc"]::after { content: " \\25BC"; }
tr.baseline td { font-weight: bold; } td.worse { color: #b00; } td.better { color: #060; }
img { max-width: 100%; display: block; margin: 1rem 0; }
"""


def _html(report: Report, images: dict[str, str]) -> str:
    import html

    table = report.summary.sort_values("mean", ascending=False)
    columns = [
        *report.axes,
        "n",
        "mean",
        "ci_low",
        "ci_high",
        "diff",
        "diff_ci_low",
        "diff_ci_high",
        "t_test_p",
        "wilcoxon_p",
        "effect_size_dz",
        "verdict",
        "params",
        "flops_per_image",
        "wall_time_s",
    ]
    rows = []
    for _, row in table.iterrows():
        verdict = _verdict(row)
        cells = []
        for column in columns:
            value = verdict if column == "verdict" else row.get(column, "")
            shown = _fmt(value) if isinstance(value, float) else str(value)
            css = f' class="{verdict}"' if column == "verdict" else ""
            cells.append(
                f'<td data-value="{html.escape(str(value))}"{css}>{html.escape(shown)}</td>'
            )
        rows.append(
            f'<tr class="{"baseline" if verdict == "baseline" else ""}">' + "".join(cells) + "</tr>"
        )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in report.notes)
    figures = "".join(
        f'<h3>{html.escape(n.replace("_", " "))}</h3><img alt="{html.escape(n)}" src="data:image/png;base64,{data}">'
        for n, data in images.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Ablation report: {html.escape(report.name)}</title><style>{_STYLE}</style></head>
<body>
<h1>Ablation report: {html.escape(report.name)}</h1>
<p>Metric: <code>{html.escape(run_metric(report.metric))}</code>. Axes: {html.escape(", ".join(report.axes) or "none")}.
Baseline: {html.escape(str(report.baseline))} ({html.escape(report.baseline_reason)}).</p>
{notes}
<div style="overflow-x: auto"><table class="sortable" id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>
<p>95% Student-t intervals over seeds; differences are seed-paired against the baseline (paired t-test, Wilcoxon signed-rank, effect size d_z); a difference whose CI includes 0 is within noise. Click a column to sort.</p>
<h2>Plots</h2>{figures}
<script>{_SORT_SCRIPT}</script>
</body></html>
"""
