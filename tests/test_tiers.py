"""The fast tier, ``pytest -m "not slow"``, touches every module of latentseg: each one is
used by at least one test module that holds a test the fast tier runs.

Which test modules the fast tier runs is asked of pytest itself (``--collect-only -m "not
slow"``, so a mark on a module, a class, a function or a parameter all count). What each of
them uses is read from its source with ``ast``, as ``tests/test_layers.py`` reads the package:
a name imported from latentseg, or an attribute read off an imported latentseg module, counts
for the module that defines it (``from latentseg.data import Shapes`` uses
``latentseg.data.synthetic``: re-exports and ``latentseg``'s lazy names are followed), with
the packages its import runs; a dotted name in a string (``"latentseg.study.runner.x"``, a
``monkeypatch`` target) counts that module, ``-m latentseg.cli`` in a command line the
package's ``__main__``, and a command line handed to the CLI (``main(["train", ...])``,
``[python, "-m", "latentseg.cli", "study", ...]``) the module of its command. A test helper
module (``tests.data.folders``, not the fixtures' conftest) lends its uses to the test module
that imports it. A module
reached only through another one's imports does not count: the fast tier must use it."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, subprocess_env
from tests.helpers_imports import PACKAGE, module_name

MODULES = {module_name(path, PACKAGE): path for path in PACKAGE.rglob("*.py")}
COMMANDS = {name.rpartition(".")[2] for name in MODULES if name.startswith("latentseg.cli.")}
COMMANDS -= {"__main__", "flags"}


def fast_test_files() -> set[Path]:
    """The test files that hold at least one test ``-m "not slow"`` selects."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow",
         "-p", "no:cacheprovider", "tests"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    assert ids, done.stdout[-3000:]
    return {ROOT / line.partition("::")[0] for line in ids}


@functools.cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def deepest(name: str) -> str | None:
    """The deepest latentseg module a dotted name reaches (``a.b.func`` -> ``a.b``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def with_parents(module: str) -> set[str]:
    """``latentseg.report.stats`` -> itself and the packages an import of it runs."""
    parts = module.split(".")
    return {".".join(parts[:end]) for end in range(1, len(parts) + 1)} & set(MODULES)


@functools.cache
def defining(module: str, name: str) -> str:
    """The module that defines ``name`` as ``module`` exposes it: a submodule, the module
    itself, or (through ``from x import name`` or a lazy ``{"name": "x"}`` table) the module
    it re-exports from."""
    if f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}".rstrip(".")
            for alias in node.names:
                if (alias.asname or alias.name) == name and base in MODULES and base != module:
                    return defining(base, alias.name)
        elif isinstance(node, ast.Dict):  # lazy names: {"create_model": "latentseg.models"}
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant) and key.value == name
                    and isinstance(value, ast.Constant) and value.value in MODULES
                    and value.value != module
                ):  # fmt: skip
                    return defining(value.value, name)
    return module


def command_of(items: list[ast.expr]) -> str | None:
    """The latentseg command a command line runs: its first string, or the one after
    ``-m latentseg.cli``."""
    strings = [e.value if isinstance(e, ast.Constant) else None for e in items]
    if "latentseg.cli" in strings:
        strings = strings[strings.index("latentseg.cli") + 1 :]
    first = strings[0] if strings else None
    return f"latentseg.cli.{first}" if first in COMMANDS else None


def used_by(path: Path, seen: frozenset[Path] = frozenset()) -> set[str]:
    """The latentseg modules the test file ``path`` uses (see the module docstring)."""
    used: set[str] = set()
    modules: dict[str, str] = {}  # local name -> the latentseg module it is bound to
    tree = parsed(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    used |= with_parents(alias.name)
                    local = alias.asname or alias.name.partition(".")[0]
                    modules[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module in MODULES and not node.level:
            for alias in node.names:
                target = defining(node.module, alias.name)
                used |= with_parents(target) | with_parents(node.module)
                if f"{node.module}.{alias.name}" in MODULES:
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests."):
            helper = ROOT / Path(*node.module.split("."))
            for candidate in (helper.with_suffix(".py"), helper / "__init__.py"):
                if (
                    candidate.is_file()
                    and candidate not in seen
                    and candidate.name != "conftest.py"
                ):
                    used |= used_by(candidate, seen | {path})
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith("latentseg.") and (module := deepest(node.value)):
                used |= with_parents(module)
        elif isinstance(node, ast.List | ast.Tuple):
            strings = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            for flag, value in zip(strings, strings[1:], strict=False):
                if flag == "-m" and f"{value}.__main__" in MODULES:
                    used.add(f"{value}.__main__")
            if "latentseg.cli" in strings and (command := command_of(node.elts)):
                used.add(command)
        elif (
            isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.List)
            and (command := command_of(node.args[0].elts)) and "latentseg.cli" in used
        ):  # fmt: skip
            used.add(command)
    for node in ast.walk(tree):  # module.attribute, once every binding is known
        chain: list[str] = []
        while isinstance(node, ast.Attribute):
            chain.insert(0, node.attr)
            node = node.value
        if chain and isinstance(node, ast.Name) and node.id in modules:
            module = modules[node.id]
            for attribute in chain:
                target = defining(module, attribute)
                used |= with_parents(target)
                if target == module or target not in MODULES:
                    break
                module = target
    return used


def test_every_latentseg_module_is_used_by_a_fast_tier_test():
    used: set[str] = set()
    for path in fast_test_files():
        used |= used_by(path)
    unused = sorted(set(MODULES) - used)
    assert not unused, (
        f"no test module of the fast tier (-m 'not slow') uses {unused}: give each a cheap "
        "test of what it does"
    )
