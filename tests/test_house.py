"""The tests are a house too (STYLE.md): what several test modules share lives in a conftest or
a helper module (``tests/helpers.py``, ``tests/helpers_*.py``, ``tests/data/folders.py``), and
no module of the tests imports a test module (``test_*.py``), itself included: a script
that a test module runs in a subprocess imports its helpers from a helper module too. The
benchmarks, which borrow the tests' rigs, take them from the helper modules as well.

Each module's source is read with ``ast``: an ``import`` or ``from ... import`` anywhere in it
counts (deferred ones included), and so does one written in a string (the script a test hands
``python -c``) or a test module named to ``python -m``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

TESTS = ROOT / "tests"
# ``from a.b import c, d`` or ``import a.b, c as e`` on a line of a string
IN_A_STRING = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\s+([\w, ]+)|import\s+([\w., ]+))", re.M)


def dotted(path: Path) -> str:
    """``tests/study/test_study.py`` -> ``tests.study.test_study``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {dotted(path): path for path in TESTS.rglob("*.py")}
TEST_MODULES = {name for name, path in MODULES.items() if path.name.startswith("test_")}


def first_words(names: str) -> set[str]:
    """``"a.b as c, d"`` -> ``{"a.b", "d"}``."""
    return {name.split()[0] for name in names.split(",") if name.strip()}


def imported(path: Path, source: str | None = None) -> set[str]:
    """The modules of the tests that the module at ``path`` (its ``source``: the file's by
    default) imports or has imported."""
    module = dotted(path)
    source = path.read_text(encoding="utf-8") if source is None else source
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                anchor = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # ``python -m tests.x``
            for base, members, plain in IN_A_STRING.findall(node.value):
                if plain:
                    names |= first_words(plain)
                else:
                    names |= {base} | {f"{base}.{m}" for m in first_words(members)}
    return names & MODULES.keys()


def test_no_module_of_the_tests_or_the_benchmarks_imports_a_test_module():
    importers = sorted([*TESTS.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])
    found = [
        f"{importer.relative_to(ROOT)} imports {MODULES[name].relative_to(ROOT)}"
        for importer in importers
        for name in sorted(imported(importer) & TEST_MODULES)
    ]
    assert not found, "shared helpers belong in tests/helpers*.py or a conftest:\n" + "\n".join(
        found
    )


def test_the_check_sees_deferred_from_and_scripted_imports():
    # the probe names ``PKG``, not ``tests``: this module's own strings must pass the check
    probe = (
        "def test_x():\n"
        "    from PKG.test_cli import COMMANDS\n"
        "    from PKG.study import test_study, conftest\n"
        "    import PKG.tracking.test_server as server\n"
        "    run('import os\\nfrom PKG.study.test_adaptive import Scripted as S\\n')\n"
        "    run(['python', '-m', 'PKG.test_readme'])\n"
        "    from PKG.helpers import Gate\n"
        "    from . import test_stop\n"
    ).replace("PKG", "tests")
    found = imported(TESTS / "study" / "test_probe.py", probe)
    named = ("test_cli", "study.test_study", "tracking.test_server", "study.test_adaptive")
    named += ("test_readme", "study.test_stop")
    assert found & TEST_MODULES == {f"tests.{name}" for name in named}
    assert {"tests.helpers", "tests.study.conftest"} <= found
