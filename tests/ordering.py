"""Longest tests first: the suite runs in the order of ``tests/durations.json`` (seconds per
test, setup to teardown, from an earlier run), so that with ``-n 2`` no long test starts when
the rest of the suite is done and one worker waits on it. Tests of one ``xdist_group`` stay
together, in their file's order (the Ray tests share one cluster, and the one that stops its
second node comes last); a test the file does not know yet is placed by its marker.

``pytest --store-durations`` rewrites the file from the run (``make durations``); tests the
run did not reach keep their last figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
UNKNOWN_SLOW_S = 10.0  # a slow test the file does not know yet: before the fast ones
UNKNOWN_FAST_S = 0.2


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


def _estimate(item: pytest.Item, known: dict[str, float]) -> float:
    if item.nodeid in known:
        return known[item.nodeid]
    return UNKNOWN_SLOW_S if item.get_closest_marker("slow") else UNKNOWN_FAST_S


def longest_first(items: list[pytest.Item], known: dict[str, float]) -> list[pytest.Item]:
    """``items`` by duration, longest first; an xdist group as one unit of its total duration
    at its first test's place, its tests in their order. Ties keep the collection order."""
    units: dict[object, list[pytest.Item]] = {}
    for item in items:
        group = item.get_closest_marker("xdist_group")
        key = (
            ("group", group.args[0] if group.args else group.kwargs.get("name")) if group else item
        )
        units.setdefault(key, []).append(item)
    ordered = sorted(units.values(), key=lambda unit: -sum(_estimate(i, known) for i in unit))
    return [item for unit in ordered for item in unit]


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items[:] = longest_first(items, known_durations())


class _Recorder:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        merged = {**known_durations(), **{k: round(v, 2) for k, v in self.seconds.items()}}
        DURATIONS.write_text(json.dumps(dict(sorted(merged.items())), indent=0) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    # the controller alone records: xdist's workers send it every report
    if config.getoption("--store-durations") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Recorder(), "latentseg-durations")
