"""``benchmarks/gpu_check.sh``, the check a developer runs on a CUDA machine, stays runnable
where there is no GPU to run it: it parses, every ``latentseg`` command line in it is one the
CLI accepts (a renamed flag or section breaks this test, not a lent GPU's run), its test
selection selects the CUDA cases of the agreement tests, and without CUDA it stops at once
with exit 2 and one line saying why."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from latentseg.bench import SECTIONS
from latentseg.cli import build_parser
from tests.conftest import ROOT, subprocess_env

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
TEXT = SCRIPT.read_text()


def latentseg_command_lines() -> list[list[str]]:
    """The arguments of every ``"$latentseg" COMMAND ...`` in the script, each shell variable
    read as ``1`` (an int where a flag takes one, a path or URL part elsewhere)."""
    found = re.findall(r'"\$latentseg" +([a-z].*)$', TEXT, flags=re.MULTILINE)
    return [shlex.split(re.sub(r"\$\{?\w+\}?", "1", line)) for line in found]


def test_the_script_is_an_executable_bash_script_that_parses():
    assert TEXT.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in TEXT
    assert os.access(SCRIPT, os.X_OK)
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_latentseg_command_line_in_the_script_is_accepted_by_the_cli():
    commands = latentseg_command_lines()
    assert sorted({argv[0] for argv in commands}) == ["bench", "report", "study"]
    parser = build_parser()
    study = reported = None
    for argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(
                f"latentseg refuses the script's command line: latentseg {shlex.join(argv)}"
            )
        if args.command == "bench":
            assert args.device == "cuda"
            assert set(args.only.split(",")) <= set(SECTIONS), args.only
        if args.command == "study":
            assert (ROOT / args.spec).is_file() and args.workers == 1  # "$gpus"
            assert "name" not in yaml.safe_load((ROOT / args.spec).read_text())
            study = Path(args.spec).stem  # so the study's name is the spec's stem
        if args.command == "report":
            reported = args.study
    assert reported == study is not None  # the report reads the study the script ran


def test_the_agreement_tests_the_script_runs_are_the_cuda_cases():
    (selection,) = re.findall(r"^agreement_tests=\((.*)\)$", TEXT, flags=re.MULTILINE)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *shlex.split(selection)],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    tests = {test_id.split("[")[0] for test_id in ids}
    assert {
        "tests/models/test_fastpath.py::test_fast_path_outputs_and_gradients_match_the_reference_in_float32",
        "tests/models/test_fastpath.py::test_fast_path_inference_matches_the_reference_in_float32",
        "tests/models/test_fastpath.py::test_bf16_logits_stay_within_the_stated_tolerance_of_float32",
        "tests/models/test_models.py::test_fused_and_reference_agree_on_outputs_gradients_and_attention",
    } == tests
    assert all("cuda" in test_id.split("[")[1] for test_id in ids)


@pytest.mark.skipif(torch.cuda.is_available(), reason="here the script would run in full")
def test_without_cuda_the_script_stops_with_exit_2_and_one_line_saying_why(tmp_path):
    fake = tmp_path / "bin"  # a driver that lists a GPU, so the check reaches torch's
    fake.mkdir()
    (fake / "nvidia-smi").write_text(
        '#!/bin/sh\ncase "$1" in -L) echo "GPU 0: Fake GPU (UUID: GPU-0)";;\n'
        '*) echo "name, memory.total [MiB]"; echo "Fake GPU, 1024 MiB";; esac\n'
    )
    (fake / "nvidia-smi").chmod(0o755)
    env = {
        **subprocess_env(),
        "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}",
        "VENV": str(Path(sys.executable).parent.parent),
    }
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    (error,) = done.stderr.splitlines()
    assert error.startswith("error: torch in ") and "sees no CUDA device" in error
    assert "cuda available: False" in done.stdout
    assert (tmp_path / "out" / "gpu.csv").read_text().startswith("name, memory.total")
