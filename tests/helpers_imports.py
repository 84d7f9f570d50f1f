"""The import graph of a package, read from its source with ``ast`` (not from
``sys.modules``): what ``tests/test_layers.py`` holds the layers to, and what
``tests/test_tiers.py`` and the bench's tests read. Every ``import``/``from ... import`` of
one of the package's modules counts, at module level, inside a function and under
``TYPE_CHECKING``."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "latentseg"


def module_name(path: Path, package: Path) -> str:
    """``<package>/train/loop.py`` -> ``latentseg.train.loop``; a package's ``__init__.py``
    is the package itself."""
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports anywhere in its source. An import
    names the deepest module it reaches: ``from latentseg.train.loop import fit`` and
    ``from latentseg.train import loop`` both point at ``latentseg.train.loop``, while
    ``from latentseg.train import fit`` points at the package ``latentseg.train``."""
    files = {module_name(p, package): p for p in package.rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets |= {known(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package upwards
                    anchor = module if is_package else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.add(submodule if submodule in files else known(base))
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph
