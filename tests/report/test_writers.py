"""The writers read the same tables: a cell shown in the Markdown is the one in the HTML and
on the terminal, and the HTML page comes from the template shipped with the package."""

import html
from importlib import resources

import pandas as pd

from latentseg.report.cells import sections
from latentseg.report.collect import Collected
from latentseg.report.render import build
from latentseg.report.tables import tables
from latentseg.report.writers import page_html, verdict_lines

AXIS = "params.model.num_latents"
SEEDS = [0.50, 0.55, 0.47, 0.52, 0.58]
SHIFT = {"16": 0.0, "4": -0.08, "8": 0.0005}


def report():
    rows = [
        {AXIS: v, "params.train.seed": str(s), "metrics.test_miou": x + shift + 0.001 * (s % 2)}
        for v, shift in SHIFT.items()
        for s, x in enumerate(SEEDS)
    ]
    collected = Collected(pd.DataFrame(rows), {}, [])
    return build(collected, "it's <ours>", "miou", {"model.num_latents": "16"}, figures=False)


def test_markdown_html_and_terminal_show_the_same_cells():
    result = report()
    built = tables(result)
    page = page_html(result, built, {})
    terminal = "\n".join(verdict_lines(result))
    for title, table_id, head, rows in sections(result, built):
        assert f"## {title}" in result.markdown
        assert "| " + " | ".join(head) + " |" in result.markdown
        assert f'id="{table_id}"' in page
        for cells in rows:
            assert "| " + " | ".join(cells) + " |" in result.markdown
            for cell in cells:
                assert f'<td data-value="{html.escape(cell)}"' in page
    for _, row in built.verdicts[built.verdicts["verdict"] != "baseline"].iterrows():
        assert row["verdict"] in terminal
    # names are escaped as html.escape does, quotes included
    assert "<title>Ablation report: it&#x27;s &lt;ours&gt;</title>" in page


def test_the_html_template_ships_with_the_package():
    template = resources.files("latentseg.report") / "templates" / "report.html.j2"
    assert template.is_file()
