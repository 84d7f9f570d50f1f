import re

import pytest

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_quickstart_is_exactly_make_demo_then_make_test():
    quickstart = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quickstart.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert re.search(
        r"^torch==2\.13\.0|TORCH_PIN := torch==2\.13\.0", (ROOT / "Makefile").read_text(), re.M
    )


def test_the_demo_the_readme_describes_is_what_make_demo_runs():
    demo = (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "study studies/quick.yaml --workers 2" in demo
    assert "report --study quick" in demo
    assert "`make demo` runs `studies/quick.yaml`" in README


def test_every_command_the_readme_lists_exists(capsys):
    from latentseg.cli import main

    commands = README.split("## Commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    listed = {line.split()[1] for line in commands.strip().splitlines()}
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    offered = set(re.findall(r"^    (\w+)\s", help_text, re.M))
    assert listed <= offered, (
        f"README lists commands that `latentseg --help` lacks: {listed - offered}"
    )
