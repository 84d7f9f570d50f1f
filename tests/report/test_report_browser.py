"""report.html in headless Chromium (Debian's package; `make setup` installs it)."""

import json
import shutil
import subprocess

import pytest

from latentseg.cli import main
from latentseg.study import run_study

pytestmark = pytest.mark.slow

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

HARNESS = """<!DOCTYPE html><html><body>
<iframe id="report" src="out/report.html" width="1280" height="900"></iframe>
<script>
document.getElementById('report').addEventListener('load', function () {
  var doc = this.contentDocument;
  var images = Array.from(doc.images);
  var table = doc.getElementById('summary');
  var before = Array.from(table.tBodies[0].rows).map(function (r) { return r.cells[0].textContent; });
  table.tHead.rows[0].cells[0].click();  // sort by the first column
  var after = Array.from(table.tBodies[0].rows).map(function (r) { return r.cells[0].textContent; });
  document.body.setAttribute('data-result', JSON.stringify({
    images: images.length,
    loaded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    rows: table.tBodies[0].rows.length,
    sorted_first_column: after.slice().sort().join('|') === after.join('|'),
    before: before, after: after
  }));
});
</script></body></html>"""


def test_report_html_shows_every_image_and_the_table_in_chromium(
    study_spec, tracking_uri, tmp_path
):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip(
            "SKIPPED LOUDLY: Chromium is not installed (make setup installs Debian's chromium)"
        )
    spec = {
        "name": "web",
        "search_space": {"model.num_latents": [2, 4], "model.expert_attention": [True, False]},
        "sampler": {"name": "grid"},
        "seeds": 2,
    }
    run_study(
        str(study_spec(spec, base={"train": {"epochs": 2}, "tracking": {"attention_plots": True}})),
        tracking_uri=tracking_uri,
        progress=False,
    )
    assert (
        main(
            [
                "report",
                "--study",
                "web",
                "--tracking-uri",
                tracking_uri,
                "-o",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )

    harness = tmp_path / "harness.html"
    harness.write_text(HARNESS)
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run(
        [
            chromium,
            *FLAGS,
            *profile,
            "--allow-file-access-from-files",
            "--virtual-time-budget=15000",
            "--dump-dom",
            harness.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 'data-result="' in dom.stdout, dom.stderr[-2000:]
    raw = dom.stdout.split('data-result="', 1)[1].split('"', 1)[0]
    result = json.loads(raw.replace("&quot;", '"').replace("&amp;", "&"))
    assert result["images"] >= 5 and result["loaded"] == result["images"], result
    assert result["rows"] == 3  # 2 latent counts with expert attention, 1 model without
    assert result["sorted_first_column"], result

    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            *FLAGS,
            *profile,
            f"--screenshot={screenshot}",
            "--window-size=1280,2400",
            (tmp_path / "out" / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert screenshot.stat().st_size > 10_000
    shutil.copy(
        screenshot, tmp_path.parent / "latentseg-report-screenshot.png"
    )  # kept for a look after the run
