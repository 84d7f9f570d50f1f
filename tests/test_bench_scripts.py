"""The scripts in ``benchmarks/`` start, and those that measure on a few tiny steps print
their figures: they time with the bench's harness, so a change to the bench that breaks them
shows here. Their timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, subprocess_env

SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
TINY = ["--batch-size", "2", "--image-size", "32", "--windows", "1", "--steps", "1", "--threads", "1"]  # fmt: skip


def run_script(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_every_benchmark_script_starts_and_explains_itself(script):
    assert "usage:" in run_script(script.name, "--help")


@pytest.mark.slow
def test_data_generation_prints_a_training_step_and_the_data_costs_against_it():
    lines = run_script("data_generation.py", "--variant", "tutorial", *TINY).splitlines()
    assert lines[0].startswith("tutorial, batch 2, 32x32, 1 threads")
    assert [line.split()[0] for line in lines[1:]] == ["training", "generate", "read"]


@pytest.mark.slow
def test_beyond_costs_gives_each_variant_as_a_ratio_to_the_first():
    rows = json.loads(run_script("beyond_costs.py", "--variants", "tutorial,mla-r8", *TINY, "--json"))  # fmt: skip
    assert [row["variant"] for row in rows] == ["tutorial", "mla-r8"]
    assert rows[0]["train_time_ratio"] == 1.0 and rows[0]["params_ratio"] == 1.0
    # MLA factorizes the key/value projections: fewer parameters and key/value activations
    assert rows[1]["params_ratio"] < 1 and rows[1]["kv_activations_ratio"] < 1
    assert all(row["train_images_per_s"] > 0 and row["infer_images_per_s"] > 0 for row in rows)
