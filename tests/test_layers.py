"""The layers of STYLE.md hold: ``latentseg`` has no import circle, no room imports a room
above it (``latentseg.study`` never imports ``latentseg.report``), only ``latentseg.tracking`` imports MLflow, and a report's statistics load and
run without torch.

The import graph (``tests/helpers_imports.py``) is read from the source with ``ast``, not
from ``sys.modules``: every ``import``/``from ... import`` of a latentseg module counts, at
module level, inside a function (a deferred import that dodges a cycle is still a cycle) and
under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import subprocess_env
from tests.helpers_imports import PACKAGE, import_graph


def find_cycle(graph: dict[str, set[str]], within: str) -> list[str] | None:
    """A cycle among the modules named ``within`` or below it (``a -> b -> a``), or None."""
    inside = {m for m in graph if m == within or m.startswith(within + ".")}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for target in sorted(graph[module] & inside):
            cycle = visit(target, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(inside):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def circles(graph: dict[str, set[str]], within: str) -> list[list[str]]:
    """One cycle (:func:`find_cycle`) for each knot of modules named ``within`` or below it
    that import each other round in a circle (a strongly connected component of two or more
    modules, found with Tarjan's algorithm), in name order."""
    inside = {m for m in graph if m == within or m.startswith(within + ".")}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    knots: list[set[str]] = []

    def connect(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in sorted(graph[module] & inside):
            if target not in order:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            knot = {stack.pop()}
            while module not in knot:
                knot.add(stack.pop())
            if len(knot) > 1:
                knots.append(knot)

    for module in sorted(inside):
        if module not in order:
            connect(module)
    found = [find_cycle({m: graph[m] & knot for m in knot}, within) for knot in knots]
    return sorted(cycle for cycle in found if cycle)


def room(module: str) -> str:
    """``latentseg.train.loop`` -> ``train``; ``latentseg.config`` -> ``config``; the
    package's own ``__init__`` (the public facade) -> ``latentseg``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


# --------------------------------------------------------------------------- the checker


def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "latentseg"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_the_checker_sees_a_cycle_closed_by_a_deferred_import(tmp_path):
    # The shape train had: loop imports resolve at the top, resolve imports loop in a function.
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "train/__init__.py": "from latentseg.train.loop import fit\n",
            "train/loop.py": "from latentseg.train.resolve import Prepared\ndef fit(): ...\n",
            "train/resolve.py": (
                "class Prepared: ...\n"
                "def prepare():\n"
                "    from latentseg.train.loop import resolve_device\n"
            ),
            "train/metrics.py": "from . import loop\n",  # relative: train.metrics -> train.loop
        },
    )
    graph = import_graph(package)
    assert graph["latentseg.train.metrics"] == {"latentseg.train.loop"}
    assert graph["latentseg.train"] == {"latentseg.train.loop"}
    assert find_cycle(graph, "latentseg.train") == [
        "latentseg.train.loop",
        "latentseg.train.resolve",
        "latentseg.train.loop",
    ]


def test_the_checker_sees_a_cycle_closed_under_type_checking(tmp_path):
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "train/__init__.py": "",
            "train/loop.py": "from latentseg.train.callbacks import TrainCallback\n",
            "train/callbacks.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from latentseg.train.loop import TrainContext\n"
            ),
        },
    )
    assert find_cycle(import_graph(package), "latentseg.train") is not None
    assert find_cycle(import_graph(package), "latentseg.data") is None


def test_the_checker_names_every_circle_of_the_package_once(tmp_path):
    # Two circles apart, one across rooms through the facade, and a chain that closes none.
    package = write_package(
        tmp_path,
        {
            "__init__.py": "def train():\n    from latentseg.tracking import run\n",
            "tracking/__init__.py": "",
            "tracking/run.py": "import latentseg\nfrom latentseg.tracking import tracker\n",
            "tracking/tracker.py": "def log():\n    from latentseg.tracking.run import tags\n",
            "models/__init__.py": "from latentseg.models import variants\n",
            "models/variants.py": "from latentseg.models import MODELS\n",
            "data/__init__.py": "from latentseg.data import base\n",
            "data/base.py": "from latentseg import errors\n",
            "errors.py": "",
        },
    )
    assert circles(import_graph(package), "latentseg") == [
        ["latentseg", "latentseg.tracking.run", "latentseg"],
        ["latentseg.models", "latentseg.models.variants", "latentseg.models"],
    ]
    assert circles(import_graph(package), "latentseg.data") == []


# --------------------------------------------------------------------------- latentseg itself


def test_the_graph_of_latentseg_holds_the_imports_of_train():
    graph = import_graph()
    # Read from the real source: the loop reaches its parts, and tracking reaches the loop.
    assert {
        "latentseg.train.callbacks",
        "latentseg.train.resolve",
        "latentseg.train.checkpoint",
        "latentseg.models",
    } <= graph["latentseg.train.loop"]
    assert "latentseg.train.callbacks" in graph["latentseg.tracking.tracker"]


def test_latentseg_has_no_import_circle():
    graph = import_graph()
    found = circles(graph, "latentseg")
    assert found == [], "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


# Room -> rooms it must never import (STYLE.md: config -> registry -> data + model -> training
# loop -> tracker -> MLflow store -> report). ``latentseg`` is the public facade (it imports
# the models, and the rest on call): the rooms below the tracker never reach back to it.
# The study and the report lean one way: the report may read a study's types
# (study.judgement), the study is handed the report's judge and never imports the report.
FACADE = "latentseg"
ABOVE_TRAIN = {"tracking", "study", "report"}
NEVER_IMPORTS = {
    "errors": {"registry", "config", "models", "data", "train", *ABOVE_TRAIN, FACADE},
    "registry": {"config", "models", "data", "train", *ABOVE_TRAIN, FACADE},
    # config logic (the inert keys included) stays torch-free: no models, no data
    "config": {"models", "data", "train", "plots", *ABOVE_TRAIN, FACADE},
    "models": {"train", "plots", *ABOVE_TRAIN, FACADE},
    "data": {"train", "plots", *ABOVE_TRAIN, FACADE},
    "train": {*ABOVE_TRAIN, FACADE},  # the loop gets a tracker as a callback
    "tracking": {"study", "report"},
    "study": {"report"},  # the command line (or the API caller) hands it the adaptive judge
    "report": {"train"},  # reads MLflow, never trains
}
ENTRY_POINTS = {"cli", "bench"}  # on top of everything: no room imports them


@pytest.mark.parametrize("lower", sorted(NEVER_IMPORTS))
def test_a_room_never_imports_a_room_above_it(lower):
    forbidden = NEVER_IMPORTS[lower] | ENTRY_POINTS
    graph = import_graph()
    modules = [m for m in graph if room(m) == lower]
    assert modules, f"no modules in room {lower!r}"
    wrong = sorted(
        f"{source} -> {target}"
        for source in modules
        for target in graph[source]
        if room(target) in forbidden
    )
    assert wrong == []


def test_the_entry_points_are_imported_by_no_room():
    graph = import_graph()
    importers = {
        (room(source), room(target))
        for source, targets in graph.items()
        for target in targets
        if room(target) in ENTRY_POINTS and room(source) != room(target)
    }
    assert importers <= {("cli", "bench")}  # the command line runs the bench


# --------------------------------------------------------------------------- mlflow in tracking


def imports_of(path: Path) -> set[str]:
    """The top-level packages ``path`` imports anywhere in its source (absolute imports)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def mlflow_importers(package: Path = PACKAGE) -> list[str]:
    """The modules of ``package`` outside ``tracking/`` that import ``mlflow`` (as paths
    relative to its parent, e.g. ``latentseg/report/collect.py``)."""
    return sorted(
        str(path.relative_to(package.parent))
        for path in package.rglob("*.py")
        if path.relative_to(package).parts[0] != "tracking" and "mlflow" in imports_of(path)
    )


def test_the_mlflow_check_sees_deferred_and_from_imports(tmp_path):
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "tracking/store.py": "import mlflow\n",
            "report/collect.py": "def f():\n    from mlflow.exceptions import MlflowException\n",
            "study/runner.py": "import mlflow.pytorch as mp\n",
            "study/spec.py": "mlflow_experiment = 'mlflow'\n",
        },
    )
    assert mlflow_importers(package) == ["latentseg/report/collect.py", "latentseg/study/runner.py"]


def test_only_tracking_imports_mlflow():
    wrong = mlflow_importers()
    assert wrong == [], "import mlflow through latentseg.tracking (TrackingStore) instead"


# --------------------------------------------------------------------------- no torch in stats

STATS_PROBE = """
import importlib.util, json, sys, types
# Load latentseg.report.stats without running latentseg/__init__.py (the public facade
# imports the models, and so torch, on its own): stats and what it imports are on trial.
root = importlib.util.find_spec("latentseg").submodule_search_locations[0]
for name, where in (("latentseg", None), ("latentseg.report", "report")):
    stub = types.ModuleType(name)
    stub.__path__ = [root if where is None else f"{root}/{where}"]
    sys.modules[name] = stub
import pandas as pd
from latentseg.report import effects, stats
rows = [
    {"params.model.expert_attention": experts, "params.model.num_latents": latents,
     "params.train.seed": seed, "metrics.val_miou": 0.5 + 0.01 * int(seed) + 0.001 * int(latents)}
    for experts in ("True", "False") for latents in ("4", "16") for seed in ("1", "2", "3")
]
frame, note = stats.mark_inert(pd.DataFrame(rows))
frame, merged = stats.deduplicate(frame)
axes = stats.ablation_axes(frame)
baseline = {"model.expert_attention": "True", "model.num_latents": "16"}
compared = stats.compare(frame, axes, "val_miou", baseline)
main_effects = effects.axis_effects(frame, axes, "val_miou", baseline)
print(json.dumps({
    "torch": "torch" in sys.modules,
    "latentseg": sorted(m for m in sys.modules if m.startswith("latentseg")),
    "note": note,
    "merged": merged,
    "latents_without_experts": sorted(
        set(frame[frame["params.model.expert_attention"] == "False"]["params.model.num_latents"])
    ),
    "compared": len(compared),
    "effects": len(main_effects),
}))
"""


def test_report_stats_loads_and_runs_without_torch():
    done = subprocess.run(
        [sys.executable, "-c", STATS_PROBE],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # the inert rule really ran: without experts the latent count is n/a, 6 runs -> 3
    assert "num_latents" in result["note"]
    assert result["latents_without_experts"] == ["n/a"] and result["merged"] == 3
    assert result["compared"] == 3 and result["effects"] >= 1
    assert "latentseg.models" not in result["latentseg"]
    assert result["torch"] is False, result["latentseg"]


def test_importing_report_stats_imports_no_torch():
    done = subprocess.run(
        [sys.executable, "-c", "import latentseg.report.stats, sys; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
