"""The report's writers: Markdown, self-contained HTML (a jinja2 template), CSV and terminal
lines. Each reads the same :class:`~latentseg.report.tables.Tables` and the same cells
(:mod:`latentseg.report.cells`); none computes a number."""

from __future__ import annotations

import html
import math
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from latentseg.errors import ConfigError
from latentseg.io import atomic_write_bytes
from latentseg.report.cells import (
    fmt,
    interval,
    lead,
    method,
    round_cell,
    sections,
    seeds_cell,
    seeds_pair,
    verdict_cell,
)
from latentseg.report.tables import Tables, tables

if TYPE_CHECKING:
    import jinja2

    from latentseg.report.tables import Report


def markdown(report: Report, built: Tables, shown: list[str]) -> str:
    """``report.md``: the lead, the tables (the forest plot under the verdicts), how to read
    them, the findings, the notes and the ``shown`` figures (files under ``plots/``)."""
    lines = [f"# Ablation report: {report.name}", "", *(f"{x}\n" for x in lead(report, built))]
    for title, _, head, rows in sections(report, built):
        lines += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        lines.append("")
        if title == "Verdicts" and "forest" in shown:
            lines += ["![forest](plots/forest.png)", ""]
    lines += [method(report), ""]
    if report.findings:
        lines += ["## Findings", "", *(f"- {line}" for line in report.findings), ""]
    lines += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    plots = [n for n in shown if n != "forest"]
    if plots:
        lines += ["## Plots", "", "\n\n".join(f"![{n}](plots/{n}.png)" for n in plots), ""]
    return "\n".join(lines)


def write(report: Report, out_dir: str | Path) -> list[Path]:
    """``report.md``, ``report.html``, ``summary.csv`` (and ``effects.csv``,
    ``interactions.csv``, ``variance.csv`` and ``pareto.csv`` when there are any) and ``plots/*.png`` in ``out_dir``, written
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
    built = tables(report)
    csv = atomic_write_bytes(out / "summary.csv", built.summary_csv.to_csv(index=False).encode())
    md = atomic_write_bytes(out / "report.md", report.markdown.encode())
    embedded = {name: base64.b64encode(data).decode() for name, data in images.items()}
    page = atomic_write_bytes(out / "report.html", page_html(report, built, embedded).encode())
    written = [
        atomic_write_bytes(out / f"{name}.csv", frame.to_csv(index=False).encode())
        for name, frame in (
            ("effects", built.effects_csv),
            ("interactions", built.interactions),
            ("variance", built.noise),
            ("pareto", built.front),
        )
        if not frame.empty
    ]
    if "pareto" in images:  # the front's plot travels with its table (to the parent run too)
        written.append(out / "plots" / "pareto.png")
    return [md, csv, page, *written]


def _inline(text: str) -> str:
    """Escaped HTML of a line of the report's prose: **bold** and `code` become tags."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


@cache
def _template() -> jinja2.Template:
    """``templates/report.html.j2``, shipped with the package. Values are escaped as
    ``html.escape`` does (quotes included); prose already turned into markup is not."""
    import jinja2
    from markupsafe import Markup

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("latentseg.report", "templates"),
        autoescape=True,
        keep_trailing_newline=True,
        finalize=lambda value: (
            value if isinstance(value, Markup) else Markup(html.escape(str(value)))
        ),
        undefined=jinja2.StrictUndefined,
    )
    return environment.get_template("report.html.j2")


def page_html(report: Report, built: Tables, images: dict[str, str]) -> str:
    """``report.html``: the Markdown's content as one page, with the ``images`` (base64 PNGs
    by name) embedded and every table sortable."""
    from markupsafe import Markup

    def prose(lines: list[str]) -> list[Markup]:
        return [Markup(_inline(line)) for line in lines]

    shown = [
        {"title": title, "id": table_id, "head": head, "rows": rows,
         "verdict_at": head.index("verdict") if "verdict" in head else -1}
        for title, table_id, head, rows in sections(report, built)
    ]  # fmt: skip
    return _template().render(
        name=report.name,
        lead=prose(lead(report, built)),
        sections=shown,
        method=Markup(_inline(method(report))),
        findings=prose(report.findings),
        notes=prose(report.notes),
        images=images,
        plots=[n for n in images if n != "forest"],
    )


def verdict_lines(report: Report) -> list[str]:
    """The verdicts as terminal lines: the decision rule, one line per compared variant and
    main effect, and what deciding the open ones would take."""
    if report.family is None:
        return ["no axis varies: nothing to compare"]
    lines = [report.family.describe(report.metric)]
    rows = tables(report).compared
    adaptive = bool(report.rounds)
    width = min(60, max((len(name) for name, _ in rows), default=10))
    lines.append(
        f"  {'compared with the baseline':<{width}}  {'verdict':<27}  {'round  ' if adaptive else ''}"
        f"{'difference [adjusted CI]':<30}  adj p  pairs  seeds: detect / equivalence"
    )
    for name, row in rows:
        lines.append(
            f"  {name[:width]:<{width}}  {verdict_cell(row):<27}  "
            f"{f'{round_cell(row):>5}  ' if adaptive else ''}{interval(row):<30}  "
            f"{fmt(row['p_adjusted'], 3):>5}  {int(row['n_pairs']):>5}  {seeds_pair(row):>27}"
        )
    open_rows = [row for _, row in rows if row["verdict"] == "inconclusive"]
    if open_rows:

        def most(column: str) -> str:
            needed = [row[column] for row in open_rows if not math.isnan(row.get(column, math.nan))]
            return seeds_cell(max(needed)) if needed else "an unknown number of"

        lines.append(
            f"{len(open_rows)} inconclusive: at ±{fmt(report.family.sesoi)}, detecting a "
            f"difference would take up to {most('seeds_needed')} seeds, showing equivalence up "
            f"to {most('seeds_equivalence')} (80% power at the "
            f"{'last planned look' if report.family.looks else 'family'}'s level)."
        )
    lines += [f"note: {note}" for note in report.warnings]
    return lines
