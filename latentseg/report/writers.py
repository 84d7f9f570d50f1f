"""The report's writers: Markdown, self-contained HTML, CSV and terminal lines, all read
from the tables :func:`latentseg.report.render.build` computed (no analysis here)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from latentseg.errors import ConfigError
from latentseg.io import atomic_write_bytes
from latentseg.report.labels import _on, change, label
from latentseg.report.stats import TEST_KEY, is_stratum

if TYPE_CHECKING:
    from latentseg.report.render import Report


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, (float, np.floating)):
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _signed(value: float, digits: int = 4) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def _interval(row, low="diff_ci_low", high="diff_ci_high") -> str:
    return f"{_signed(row.get('diff', math.nan))} [{_signed(row.get(low, math.nan))}, {_signed(row.get(high, math.nan))}]"


def _ratio_cell(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"x{value:.2f}"


def _seeds_cell(value: float) -> str:
    if value is None or math.isnan(value):
        return "–"
    return "> 1000" if math.isinf(value) else str(int(value))


def _seeds_pair(row) -> str:
    """``6 / 14``: seed pairs to detect a difference of SESOI, and to show equivalence."""
    return (
        f"{_seeds_cell(row.get('seeds_needed', math.nan))} / "
        f"{_seeds_cell(row.get('seeds_equivalence', math.nan))}"
    )


def verdict_cell(row) -> str:
    """The verdict in words: ``equivalent (slightly worse)`` for a decided but negligible
    difference, ``better (relevant)`` when the whole interval lies beyond the SESOI,
    ``equivalent (exploratory)`` under bh (its intervals are not simultaneous), a ``*`` where
    failed runs may be the effect (the notes say which)."""
    verdict = str(row["verdict"])
    direction = row.get("direction") or ""
    if verdict == "equivalent" and bool(row.get("exploratory") or False):
        verdict += " (exploratory)"
    elif verdict == "equivalent" and direction in ("better", "worse"):
        verdict += f" (slightly {direction})"
    elif verdict in ("better", "worse") and bool(row.get("relevant") or False):
        verdict += " (relevant)"
    if bool(row.get("failures_matter") or False):
        verdict += " *"
    return verdict


SEED_VALUES_UP_TO = 5  # with this many seeds or fewer, each seed's value is shown


def _round_cell(row) -> str:
    """The round whose look decided a comparison ('–' while it is open)."""
    value = row.get("decided_round", math.nan)
    return "–" if value is None or pd.isna(value) or int(value) == 0 else str(int(value))


_Section = tuple[str, str, list[str], list[list[str]]]  # title, id, header, rows
SEEDS_HEAD = "seeds: detect / equivalence"


def _sections(report: Report) -> list[_Section]:
    """The report's tables, in order: (title, id, header, rows); shared by Markdown and HTML."""
    sections = [_verdicts_section(report)]
    if report.rounds:
        sections.append(_rounds_section(report))
    if not report.effects.empty:
        sections.append(_effects_section(report))
    if not report.interactions.empty:
        sections.append(_interactions_section(report))
    sections.append(_details_section(report))
    return sections


def _verdicts_section(report: Report) -> _Section:
    """Each variant against the baseline, by dataset, decided verdicts first."""
    keys, table = report.axes, report.summary
    tasks = [k for k in keys if is_stratum(k)]
    order = table.assign(
        _base=table["verdict"] != "baseline", _open=table["verdict"] == "inconclusive"
    ).sort_values(
        [*tasks, "_base", "_open", "diff"], ascending=[*([True] * len(tasks)), True, True, False]
    ) if "diff" in table else table  # decided verdicts lead  # fmt: skip
    adaptive = bool(report.rounds)
    head = [*(["dataset"] if tasks else []), "change from the baseline", "verdict"]
    head += [*(["round"] if adaptive else []), "difference [adjusted CI]"]
    head += ["adjusted p", "pairs", "MDE", SEEDS_HEAD, "FLOPs", "time/img"]
    rows = []
    for _, row in order.iterrows():
        base = row["verdict"] == "baseline"
        rows.append(
            [*([str(row[tasks[0]])] if tasks else []),
             "(baseline)" if base else change(row, keys, report.baseline),
             verdict_cell(row),
             *([_round_cell(row)] if adaptive else []),
             "–" if base else _interval(row),
             "–" if base else _fmt(row.get("p_adjusted", math.nan), 3),
             str(int(row.get("n_pairs", row["n"]) or 0)),
             "–" if base else _fmt(row.get("mde", math.nan)),
             "–" if base else _seeds_pair(row),
             "–" if base else _ratio_cell(row.get("flops_ratio", math.nan)),
             "–" if base else _ratio_cell(row.get("time_ratio", math.nan))]
        )  # fmt: skip
    return "Verdicts", "verdicts", head, rows


def _rounds_section(report: Report) -> _Section:
    """Adaptive seeds: what each look spent and decided."""
    rows = [
        [str(r["round"]), str(r["seeds"]), f"{r['alpha']:.4f}", str(r["decided"]), str(r["open"])]
        for r in report.rounds
    ]
    head = ["round", "seeds per open point", "alpha spent", "decided so far", "inconclusive"]
    return "Rounds of seeds", "rounds", head, rows


def _effects_section(report: Report) -> _Section:
    """Each main effect, decided verdicts first."""
    rows = [
        [str(r["axis"]), f"{r['value']} vs {r['baseline_value']}",
         "all" if r["scope"] == "all" else str(r["scope"]), verdict_cell(r), _interval(r),
         _fmt(r["p_adjusted"], 3), str(int(r["n_pairs"])), str(r.get("contexts", "–")),
         _fmt(r["mde"]), _seeds_pair(r), _ratio_cell(r["flops_ratio"]),
         _ratio_cell(r["time_ratio"])]
        for _, r in report.effects.sort_values(
            "verdict", key=lambda v: v == "inconclusive", kind="stable"
        ).iterrows()  # decided verdicts lead
    ]  # fmt: skip
    head = ["axis", "change", "datasets", "verdict", "difference [adjusted CI]"]
    head += ["adjusted p", "seed blocks", "contexts", "MDE", SEEDS_HEAD, "FLOPs", "time/img"]
    return "Main effects", "effects", head, rows


def _interactions_section(report: Report) -> _Section:
    """Each two-way interaction, with its contrast when it has one."""
    rows = []
    for _, r in report.interactions.iterrows():
        contrast = (
            f"{_signed(r['contrast'])} [{_signed(r['contrast_ci95_low'])}, {_signed(r['contrast_ci95_high'])}]"
            if "contrast" in r and not pd.isna(r.get("contrast"))
            else "–"
        )
        rows.append(
            [f"{r['axis_a']} x {r['axis_b']}", str(r["levels"]), _fmt(r["F"], 2),
             f"{_fmt(r['df_num'], 0)}, {_fmt(r['df_den'], 0)}", str(int(r["n_blocks"])), _fmt(r["p"], 3),
             _fmt(r["p_adjusted"], 3), contrast]
        )  # fmt: skip
    head = ["axes", "levels", "F", "df", "seed blocks", "p", "Holm p", "interaction [95% CI]"]
    return "Interactions", "interactions", head, rows


def _details_section(report: Report) -> _Section:
    """Every variant, best mean first, with its unadjusted statistics and costs."""
    keys = report.axes
    order = "diff" if "diff" in report.summary else "mean"  # paired: the verdicts' order
    details = report.summary.sort_values(order, ascending=False, kind="stable")
    show_values = "seed_values" in details and details["n"].max() <= SEED_VALUES_UP_TO
    head = [*keys, "n", "mean", "95% CI", *(["per seed"] if show_values else [])]
    head += ["mean / baseline's, paired seeds"]
    head += ["diff", "95% CI of diff (unadjusted)", "p (unadjusted)", "Hedges g"]
    head += ["Wilcoxon p", "params", "GFLOP/img", "wall s"]
    rows = []
    for _, row in details.iterrows():
        rows.append(
            [*(str(row[k]) for k in keys), str(int(row["n"])), _fmt(row["mean"]),
             f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]",
             *([str(row["seed_values"])] if show_values else []),
             f"{_fmt(row.get('mean_paired', math.nan))} / {_fmt(row.get('baseline_mean_paired', math.nan))}",
             _signed(row.get("diff", math.nan)),
             f"[{_signed(row.get('diff_ci95_low', math.nan))}, {_signed(row.get('diff_ci95_high', math.nan))}]",
             _fmt(row.get("p", math.nan), 3), _fmt(row.get("hedges_g", math.nan), 2),
             _fmt(row.get("wilcoxon_p", math.nan), 3), _fmt(row["params"], 0),
             _fmt(row["flops_per_image"] / 1e9, 3), _fmt(row["wall_time_s"], 0)]
        )  # fmt: skip
    return "Details per variant", "summary", head, rows


def _lead(report: Report) -> list[str]:
    """The sentences above the verdict table: metric, baseline, decision rule, counts."""
    base = label(report.baseline, [k for k in report.axes if not is_stratum(k)])
    lines = [
        f"Metric: {report.metric}, the test split at each run's best-validation checkpoint "
        "(validation picks the epoch, test scores it).",
        f"Baseline: {base} ({report.baseline_reason}).",
    ]
    if report.family is not None:
        lines.append("Decision rule: " + report.family.describe(report.metric) + ".")
        counts = pd.concat(
            [report.summary["verdict"], report.effects.get("verdict", pd.Series(dtype=str))]
        ).value_counts()
        shown = [
            f"{counts.get(v, 0)} {v}" for v in ("better", "worse", "equivalent", "inconclusive")
        ]
        lines.append("Verdicts (variants and main effects): " + ", ".join(shown) + ".")
    lines += [f"**Warning:** {w}" for w in report.warnings]
    return lines


def _method(report: Report) -> str:
    family = report.family
    sesoi = _fmt(family.sesoi, 4) if family else "–"
    return (
        "How to read it. Each variant is compared with the baseline over runs paired by seed "
        "(within a dataset); each main effect is, within each seed, the mean over the other "
        "axes' combinations (contexts) of the difference the axis makes, then compared across "
        "seeds like a paired difference (contexts: how many of the grid's it covers). All of "
        "them form one family. better/worse: the test decided the sign, with the chance of any "
        "false sign in the whole report controlled, and the interval reaches past the smallest "
        f"effect of interest (±{sesoi}); relevant: all of the interval lies beyond it. "
        "equivalent: the interval lies within it, whether or not it excludes 0 (slightly "
        "better/worse: a decided but negligible difference). inconclusive: neither. The "
        "intervals are the family's: they hold together (see the decision rule). A test "
        "repeated in the family (a main effect that is also a variant's comparison) counts "
        "once. MDE: the smallest true difference this design detects with 80% power, with the "
        "observed spread. Seeds: detect / equivalence: the seed pairs at which a difference of "
        "the smallest effect of interest is found with 80% power, and at which equivalence is "
        "shown with 80% chance when the true difference is 0 (always more). Intervals never "
        "leave the metric's range. Interactions: the two-way terms estimated within each seed "
        "and tested across seeds (t-test, or Hotelling's T-squared for more than two levels), "
        "Holm-adjusted among themselves. Details: per-variant Student-t 95% intervals, means "
        "over the seeds paired with the baseline, and unadjusted per-comparison statistics "
        "(Hedges g is bias-corrected; Wilcoxon appears only from 6 pairs, where it can reject "
        "at 5%)."
    )


def _markdown(report: Report, findings: list[str], shown: list[str]) -> str:
    lines = [f"# Ablation report: {report.name}", "", *(f"{x}\n" for x in _lead(report))]
    for title, _, head, rows in _sections(report):
        lines += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        lines.append("")
        if title == "Verdicts" and "forest" in shown:
            lines += ["![forest](plots/forest.png)", ""]
    lines += [_method(report), ""]
    if findings:
        lines += ["## Findings", "", *(f"- {line}" for line in findings), ""]
    lines += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    plots = [n for n in shown if n != "forest"]
    if plots:
        lines += ["## Plots", "", "\n\n".join(f"![{n}](plots/{n}.png)" for n in plots), ""]
    return "\n".join(lines)


def write(report: Report, out_dir: str | Path) -> list[Path]:
    """``report.md``, ``report.html``, ``summary.csv`` (and ``effects.csv`` and
    ``interactions.csv`` when there are any) and ``plots/*.png`` in ``out_dir``, written
    atomically; returns the paths of the documents, report.md, summary.csv and report.html
    first."""
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
    csv = atomic_write_bytes(out / "summary.csv", _summary_csv(report).to_csv(index=False).encode())
    md = atomic_write_bytes(out / "report.md", report.markdown.encode())
    embedded = {name: base64.b64encode(data).decode() for name, data in images.items()}
    html = atomic_write_bytes(out / "report.html", _html(report, embedded).encode())
    tables = [
        atomic_write_bytes(out / f"{name}.csv", frame.to_csv(index=False).encode())
        for name, frame in (
            ("effects", report.effects.drop(columns=TEST_KEY, errors="ignore")),
            ("interactions", report.interactions),
        )
        if not frame.empty
    ]
    return [md, csv, html, *tables]


SUMMARY_LEAD = [
    "verdict", "direction", "relevant", "diff", "diff_ci_low", "diff_ci_high", "p_adjusted",
    "n_pairs", "mde", "seeds_needed", "seeds_equivalence", "decided_round", "ci_level",
]  # fmt: skip


def _summary_csv(report: Report) -> pd.DataFrame:
    """The variants' table with the verdict columns first after the axes."""
    table = report.summary
    lead = [*report.axes, *(c for c in SUMMARY_LEAD if c in table)]
    return table[lead + [c for c in table.columns if c not in lead and not c.startswith("_")]]


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
#verdicts td:nth-child(-n+2), #effects td:nth-child(-n+3) { text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[data-order="asc"]::after { content: " \\25B2"; } th[data-order="desc"]::after { content: " \\25BC"; }
tr.baseline td { font-weight: bold; } td.worse { color: #b00; } td.better { color: #060; }
td.equivalent { color: #036; } td.inconclusive { color: #777; }
img { max-width: 100%; display: block; margin: 1rem 0; }
"""


def _inline(text: str) -> str:
    """Escaped HTML of a line of the report's prose: **bold** and `code` become tags."""
    import html
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _html(report: Report, images: dict[str, str]) -> str:
    import html

    def image(name: str) -> str:
        return (
            f"<h3>{html.escape(name.replace('_', ' '))}</h3>"
            f'<img alt="{html.escape(name)}" src="data:image/png;base64,{images[name]}">'
        )

    parts = [f"<p>{_inline(line)}</p>" for line in _lead(report)]
    for title, table_id, head, rows in _sections(report):
        verdict_at = head.index("verdict") if "verdict" in head else -1
        body = []
        for cells in rows:
            tds = []
            for i, cell in enumerate(cells):
                # the verdict's first word: "equivalent (slightly worse)" is equivalent
                css = f' class="{html.escape(cell.split()[0])}"' if i == verdict_at else ""
                tds.append(f'<td data-value="{html.escape(cell)}"{css}>{html.escape(cell)}</td>')
            base = (
                ' class="baseline"' if verdict_at >= 0 and cells[verdict_at] == "baseline" else ""
            )
            body.append(f"<tr{base}>" + "".join(tds) + "</tr>")
        parts.append(
            f'<h2>{html.escape(title)}</h2><div style="overflow-x: auto">'
            f'<table class="sortable" id="{table_id}"><thead><tr>'
            + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        )
        if table_id == "verdicts" and "forest" in images:
            parts.append(image("forest"))
    parts.append(f"<p>{_inline(_method(report))} Click a column to sort.</p>")
    if report.findings:
        items = "".join(f"<li>{_inline(n)}</li>" for n in report.findings)
        parts.append(f"<h2>Findings</h2><ul>{items}</ul>")
    items = "".join(f"<li>{_inline(n)}</li>" for n in report.notes)
    parts.append(f"<h2>Notes</h2><ul>{items}</ul>")
    plots = [n for n in images if n != "forest"]
    if plots:
        parts.append("<h2>Plots</h2>" + "".join(image(n) for n in plots))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Ablation report: {html.escape(report.name)}</title><style>{_STYLE}</style></head>
<body>
<h1>Ablation report: {html.escape(report.name)}</h1>
{"".join(parts)}
<script>{_SORT_SCRIPT}</script>
</body></html>
"""


def verdict_lines(report: Report) -> list[str]:
    """The verdicts as terminal lines: the decision rule, one line per compared variant and
    main effect, and what deciding the open ones would take."""
    if report.family is None:
        return ["no axis varies: nothing to compare"]
    lines = [report.family.describe(report.metric)]
    rows = []
    keys = report.axes
    for _, row in report.summary[report.summary["verdict"] != "baseline"].iterrows():
        rows.append((change(row, keys, report.baseline) + _on(row, keys), row))
    for _, row in report.effects.iterrows():
        scope = "" if row["scope"] == "all" else f" on {row['scope']}"
        rows.append(
            (
                f"main effect: {row['axis'].split('.')[-1]} {row['value']} vs {row['baseline_value']}{scope}",
                row,
            )
        )
    rows.sort(key=lambda item: item[1]["verdict"] == "inconclusive")  # decided verdicts lead
    adaptive = bool(report.rounds)
    width = min(60, max((len(name) for name, _ in rows), default=10))
    lines.append(
        f"  {'compared with the baseline':<{width}}  {'verdict':<27}  {'round  ' if adaptive else ''}"
        f"{'difference [adjusted CI]':<30}  adj p  pairs  seeds: detect / equivalence"
    )
    for name, row in rows:
        lines.append(
            f"  {name[:width]:<{width}}  {verdict_cell(row):<27}  "
            f"{f'{_round_cell(row):>5}  ' if adaptive else ''}{_interval(row):<30}  "
            f"{_fmt(row['p_adjusted'], 3):>5}  {int(row['n_pairs']):>5}  {_seeds_pair(row):>27}"
        )
    open_rows = [row for _, row in rows if row["verdict"] == "inconclusive"]
    if open_rows:

        def most(column: str) -> str:
            needed = [row[column] for row in open_rows if not math.isnan(row.get(column, math.nan))]
            return _seeds_cell(max(needed)) if needed else "an unknown number of"

        lines.append(
            f"{len(open_rows)} inconclusive: at ±{_fmt(report.family.sesoi)}, detecting a "
            f"difference would take up to {most('seeds_needed')} seeds, showing equivalence up "
            f"to {most('seeds_equivalence')} (80% power at the "
            f"{'last planned look' if report.family.looks else 'family'}'s level)."
        )
    lines += [f"note: {note}" for note in report.warnings]
    return lines
