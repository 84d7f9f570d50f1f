"""Crash-safe writes (latentseg.io): a reader sees the old file or the whole new one, never a
half-written file, and a failed write leaves no temporary file behind."""

from __future__ import annotations

import pytest

from latentseg.io import atomic_write, atomic_write_bytes


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state" / "summary.json"
    atomic_write_bytes(path, b"old")  # makes the folder too

    def half_then_crash(handle):
        handle.write(b"new, but only ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_crash)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]


def test_a_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "summary.json"
    path.write_bytes(b"a much longer old content")
    assert atomic_write_bytes(path, b"new") == path
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
