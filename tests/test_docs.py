"""The documentation keeps its promises: every relative link in README.md and docs/*.md reaches
a file (and heading) in the repository, the README stays a screen, and the configuration
reference in docs/configuration.md is the one `make docs` generates from the config models."""

import re
from pathlib import Path

import pytest

from latentseg.docs import BEGIN, END, PAGE, config_reference, configuration_page
from tests.conftest import ROOT

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
CONFIGURATION = (ROOT / PAGE).read_text()

# [text](target): the target up to whitespace or ')'; images and links alike.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*```")


def prose(text: str) -> str:
    """``text`` without its fenced code blocks, where brackets are code, not links."""
    kept, in_code = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            kept.append(line)
    return "\n".join(kept)


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of ``text``: lower case, punctuation dropped,
    spaces to hyphens, a repeated heading numbered."""
    seen: dict[str, int] = {}
    result = set()
    for line in prose(text).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(page: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(page.read_text()))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_the_link_checker_reads_github_anchors():
    text = "# Results\n## `studies/quick.yaml`: the demo\n```\n# not a heading\n```\n## Results"
    assert anchors(text) == {"results", "studiesquickyaml-the-demo", "results-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(ROOT.resolve()):
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_readme_links_every_docs_page():
    linked = {
        (README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)
    }
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_the_readme_fits_on_a_screen():
    lines = len(README.read_text().splitlines())
    assert lines <= 260, f"README.md has {lines} lines; move detail to docs/"


def test_configuration_page_is_generated_from_the_config_models():
    assert configuration_page() == CONFIGURATION, "docs/configuration.md is stale: run `make docs`"
    block = CONFIGURATION[CONFIGURATION.index(BEGIN) : CONFIGURATION.index(END) + len(END)]
    assert block == config_reference()


def test_every_config_key_is_documented():
    from latentseg.config import SECTIONS

    for section, model in SECTIONS.items():
        for key in model.model_fields:
            assert f"| `{section}.{key}` |" in CONFIGURATION, f"{section}.{key}"


def test_make_docs_writes_the_configuration_page():
    makefile = (ROOT / "Makefile").read_text()
    docs_target = makefile.split("\ndocs:", 1)[1].split("\n\n", 1)[0]
    assert f"python -m latentseg.docs --write {PAGE}" in docs_target


def test_write_page_rewrites_a_stale_page_and_leaves_a_current_one(tmp_path):
    from latentseg.docs import write_page

    page = tmp_path / "configuration.md"
    page.write_text("stale\n")
    assert write_page(str(page)) is True
    assert page.read_text() == configuration_page()
    assert write_page(str(page)) is False
