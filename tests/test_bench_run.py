"""``latentseg bench``'s driver (latentseg.bench.run): it runs the sections asked for and no
other, and says first, in its result and its first line, how it measures. (The sections
themselves are timed in tests/test_bench_overheads.py and tests/models/test_fastpath.py.)"""

from __future__ import annotations

from latentseg.bench.run import SECTIONS, run_bench


def test_only_the_sections_asked_run_and_the_settings_are_stated_first():
    lines: list[str] = []
    result = run_bench(
        ["tutorial"], batch_size=4, image_size=64, windows=3, steps=2, sections=(),
        log=lines.append,
    )  # fmt: skip
    assert set(result) == {"machine", "settings"}  # no section of SECTIONS ran
    assert set(SECTIONS) & set(result) == set()
    assert result["settings"] == {"batch_size": 4, "image_size": 64, "windows": 3, "steps": 2}
    assert result["machine"]["matmul_gflops"] > 0
    (line,) = lines
    assert line.endswith("batch 4, 64x64, medians of 3 alternating windows of 2 steps")
