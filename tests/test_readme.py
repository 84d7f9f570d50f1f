import re

from latentseg.docs import BEGIN, END, config_reference
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_config_reference_in_readme_matches_the_config_models():
    block = README[README.index(BEGIN) : README.index(END) + len(END)]
    assert block == config_reference(), "README is stale: run `make docs`"


def test_every_config_key_is_documented():
    from latentseg.config import SECTIONS

    for section, model in SECTIONS.items():
        for key in model.model_fields:
            assert f"| `{section}.{key}` |" in README, f"{section}.{key}"


def test_quickstart_is_exactly_make_demo_then_make_test():
    quickstart = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quickstart.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert re.search(
        r"^torch==2\.13\.0|TORCH_PIN := torch==2\.13\.0", (ROOT / "Makefile").read_text(), re.M
    )
