"""The suite's order (tests/ordering.py): longest first, an xdist group kept whole and in its
file's order, tests the durations file does not know placed by their marker."""

from __future__ import annotations

import pytest

from tests.ordering import longest_first, plain, ungrouped


class Item:
    """What longest_first reads of a pytest item: its node id and its markers."""

    def __init__(self, nodeid: str, *marks: pytest.MarkDecorator) -> None:
        self.nodeid = nodeid
        self.marks = {m.name: m.mark for m in marks}

    def get_closest_marker(self, name: str):
        return self.marks.get(name)

    def iter_markers(self, name: str):
        return [self.marks[name]] if name in self.marks else []


def test_the_longest_tests_come_first_and_a_group_stays_whole_in_its_order():
    group = pytest.mark.xdist_group("ray")
    items = [
        Item("a::fast"),
        Item("ray::first", pytest.mark.slow, group),
        Item("b::long", pytest.mark.slow),
        Item("ray::second", pytest.mark.slow, group),
        Item("c::new_slow", pytest.mark.slow),
        Item("d::new_fast"),
    ]
    known = {"a::fast": 0.5, "ray::first": 30, "ray::second": 40, "b::long": 60}
    order = [item.nodeid for item in longest_first(items, known)]
    # the group weighs 70 s together, at its first test's place, in file order
    assert order == [
        "ray::first",
        "ray::second",
        "b::long",
        "c::new_slow",
        "a::fast",
        "d::new_fast",
    ]


def test_ties_keep_the_collection_order():
    items = [Item(f"t::{i}") for i in range(5)]
    assert [i.nodeid for i in longest_first(items, {})] == [f"t::{i}" for i in range(5)]


def test_a_worker_whose_xdist_lost_the_group_suffix_is_told():
    """Under --dist loadgroup xdist schedules a grouped test by an ``@group`` suffix on its
    node id; with pytest 9.2 it is not there (pytest-xdist#1386) and the check names it."""
    seen = [
        ("tests/study/test_ray.py::test_grid@ray", ["ray"]),
        ("tests/a.py::test_plain", []),
        ("tests/a.py::test_case[user@host]", []),  # an @ inside a parameter is no group
    ]
    assert ungrouped(seen) == []
    lost = [("tests/study/test_ray.py::test_grid", ["ray"]), ("t.py::t[a@b]", ["ray"])]
    assert ungrouped(lost) == ["tests/study/test_ray.py::test_grid", "t.py::t[a@b]"]


def test_durations_are_kept_under_the_test_not_its_group_suffix():
    assert plain("tests/study/test_ray.py::test_grid@ray") == "tests/study/test_ray.py::test_grid"
    assert plain("t.py::t[user@host]") == "t.py::t[user@host]"
    assert plain("t.py::t[user@host]@ray") == "t.py::t[user@host]"
    assert plain("tests/a@b/test_x.py::test_y") == "tests/a@b/test_x.py::test_y"  # a path's @
