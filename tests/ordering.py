"""Longest tests first: the suite runs in the order of ``tests/durations.json`` (seconds per
test, setup to teardown, from an earlier run), so that with ``-n 2`` no long test starts when
the rest of the suite is done and one worker waits on it. Tests of one ``xdist_group`` stay
together, in their file's order (the Ray tests share one cluster, and the one that stops its
second node comes last); a test the file does not know yet is placed by its marker. Where xdist
cannot group (pytest-xdist#1386), each grouped test fails saying so instead of running
alongside its group.

``pytest --store-durations`` rewrites the file from the run (``make durations``); tests the
run did not reach keep their last figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
UNKNOWN_SLOW_S = 10.0  # a slow test the file does not know yet: before the fast ones
UNKNOWN_FAST_S = 0.2
_UNGROUPED = pytest.StashKey[set]()  # on a worker: grouped tests xdist could not group


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store-durations",
        action="store_true",
        help="write each test's duration (setup to teardown) to tests/durations.json, "
        "which orders the next runs longest first",
    )


def known_durations() -> dict[str, float]:
    try:
        return json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}


def plain(nodeid: str) -> str:
    """``nodeid`` without the ``@group`` suffix xdist's loadgroup gives a grouped test: an
    ``@`` after the test's name and its parameters (not one inside them or in a path)."""
    at = nodeid.rfind("@")
    return nodeid[:at] if at > max(nodeid.rfind("]"), nodeid.rfind("::")) else nodeid


def _estimate(item: pytest.Item, known: dict[str, float]) -> float:
    seconds = known.get(plain(item.nodeid))
    if seconds is not None:
        return seconds
    return UNKNOWN_SLOW_S if item.get_closest_marker("slow") else UNKNOWN_FAST_S


def group_names(item: pytest.Item) -> list[str]:
    """The ``xdist_group`` names of ``item``, as pytest-xdist reads them."""
    return sorted(
        {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
    )


def longest_first(items: list[pytest.Item], known: dict[str, float]) -> list[pytest.Item]:
    """``items`` by duration, longest first; an xdist group as one unit of its total duration
    at its first test's place, its tests in their order. Ties keep the collection order."""
    units: dict[object, list[pytest.Item]] = {}
    for item in items:
        names = group_names(item)  # xdist's scope: the names joined
        units.setdefault(("group", "_".join(names)) if names else item, []).append(item)
    ordered = sorted(units.values(), key=lambda unit: -sum(_estimate(i, known) for i in unit))
    return [item for unit in ordered for item in unit]


def ungrouped(tests: list[tuple[str, list[str]]]) -> list[str]:
    """Of ``(nodeid, group names)`` pairs seen on an xdist worker under ``--dist loadgroup``,
    the node ids that carry groups but not the ``@group`` suffix xdist schedules them by. With
    pytest 9.2 and pytest-xdist 3.8 every grouped test is one (pytest-xdist#1386): xdist sets
    a field that pytest no longer reads, and the groups' tests run on any worker at once."""
    return [nodeid for nodeid, names in tests if names and plain(nodeid) == nodeid]


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected, and after xdist's suffixes
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput") and config.getvalue("loadgroup"):
        config.stash[_UNGROUPED] = set(
            ungrouped([(item.nodeid, group_names(item)) for item in items])
        )
    items[:] = longest_first(items, known_durations())


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A grouped test that xdist could not group fails with the reason instead of running
    alongside the other tests of its group on another worker."""
    if item.nodeid in item.config.stash.get(_UNGROUPED, set()):
        pytest.fail(
            f"--dist loadgroup does not group this test with pytest {pytest.__version__} "
            "(pytest-xdist#1386): its group's tests would run on several workers at once; "
            "install pytest<9.2 (pip install -e '.[dev]')",
            pytrace=False,
        )


class _Recorder:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        nodeid = plain(report.nodeid)
        self.seconds[nodeid] = self.seconds.get(nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        merged = {**known_durations(), **{k: round(v, 2) for k, v in self.seconds.items()}}
        DURATIONS.write_text(json.dumps(dict(sorted(merged.items())), indent=0) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    # the controller alone records: xdist's workers send it every report
    if config.getoption("--store-durations") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Recorder(), "latentseg-durations")
