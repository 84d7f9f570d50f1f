"""A journal damaged by a write cut short (a crash or a full disk mid-append): the real
journal file, real launches through the CLI."""

import re
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from latentseg.cli import main
from latentseg.study.storage import default_journal, make_storage

pytestmark = pytest.mark.slow

SPEC = {"name": "j", "search_space": {"model.num_latents": [2, 4]}, "sampler": {"name": "grid"}}
CUT = b'{"op_code": 4, "worker_id": "x", "trial_id": 0, "para'  # a write cut short


def launch(path, tracking_uri) -> int:
    return main(["study", str(path), "--tracking-uri", tracking_uri, "--no-progress"])


def launch_elsewhere(path, tracking_uri, cwd) -> None:
    """A launch in its own process, gone once it ends (as the one a crash interrupted)."""
    import sys

    from tests.conftest import subprocess_env

    command = [sys.executable, "-m", "latentseg.cli", "study", str(path), "--tracking-uri",
               tracking_uri, "--no-progress"]  # fmt: skip
    subprocess.run(command, cwd=cwd, env=subprocess_env(), check=True, capture_output=True)


def test_a_cut_short_last_line_is_set_aside_and_the_study_runs(
    study_spec, tracking_uri, tmp_path, capsys
):
    """The journal's last line lacks its newline: the next launch moves it to
    ``journal.log.damaged`` (nothing is lost: it never completed), says so in one line, and
    the study runs; without the repair the next append would be glued to it and the journal
    would stop reading."""
    journal = default_journal(tracking_uri)
    assert launch(study_spec(SPEC), tracking_uri) == 0
    with open(journal, "ab") as handle:
        handle.write(CUT)
    path = study_spec({**SPEC, "name": "j2"}, name="j2.yaml")
    assert launch(path, tracking_uri) == 0
    err = capsys.readouterr().err
    assert f"{journal}: its last line was a write cut short (53 bytes" in err
    assert Path(f"{journal}.damaged").read_bytes() == CUT + b"\n"
    storage = make_storage(f"journal:{journal}", 1)
    for name in ("j", "j2"):
        trials = optuna.load_study(study_name=name, storage=storage).trials
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2


def test_a_damaged_line_inside_the_journal_is_named_with_the_way_out(
    study_spec, tracking_uri, tmp_path, capsys
):
    """A cut-short write with another write glued after it (a journal damaged before the
    repair above existed): exit 2 and one line naming the file, the line and the fix; the
    fix, followed to the letter, lets the study finish every point."""
    journal = default_journal(tracking_uri)
    path = study_spec(SPEC)
    launch_elsewhere(path, tracking_uri, tmp_path)
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[-1] = CUT + lines[-1]  # the last operation, glued behind a cut-short one
    journal.write_bytes(b"".join(lines))
    capsys.readouterr()
    assert launch(path, tracking_uri) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    number = len(lines)
    assert err.startswith(f"error: {journal}: line {number} is damaged")
    command = re.search(r"\((sed -i '\d+d' \S+)\)", err).group(1)
    assert command == f"sed -i '{number}d' {journal}"
    subprocess.run(command, shell=True, check=True, cwd=tmp_path)
    assert launch(path, tracking_uri) == 0
    trials = optuna.load_study(study_name="j", storage=make_storage(f"journal:{journal}", 1)).trials
    done = sorted(t.params["model.num_latents"] for t in trials if t.state == TrialState.COMPLETE)
    assert done == [2, 4]
