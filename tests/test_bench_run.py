"""``latentseg bench``'s driver (latentseg.bench.run): it runs the sections asked for and no
other, and says first, in its result and its first line, how it measures. (The sections
themselves are timed in tests/test_bench_overheads.py and tests/models/test_fastpath.py.)"""

from __future__ import annotations

import pytest
import torch

from latentseg.bench.run import SECTIONS, run_bench
from latentseg.cli import main


def test_only_the_sections_asked_run_and_the_settings_are_stated_first():
    lines: list[str] = []
    result = run_bench(
        ["tutorial"], batch_size=4, image_size=64, windows=3, steps=2, sections=(),
        log=lines.append,
    )  # fmt: skip
    assert set(result) == {"machine", "settings"}  # no section of SECTIONS ran
    assert set(SECTIONS) & set(result) == set()
    assert result["settings"] == {"batch_size": 4, "image_size": 64, "windows": 3, "steps": 2}
    assert result["machine"]["matmul_gflops"] > 0 and result["machine"]["device"] == "cpu"
    (line,) = lines
    assert line.endswith("batch 4, 64x64, medians of 3 alternating windows of 2 steps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="here --device cuda would run")
def test_bench_on_cuda_without_a_cuda_device_exits_2_with_one_line(capsys):
    assert main(["bench", "--device", "cuda", "--only", "report"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --device cuda: torch sees no CUDA device here")
