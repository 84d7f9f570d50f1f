"""A process latentseg owns ends without the interpreter's teardown of its modules
(latentseg.exiting): with the status recorded, after the threads and every later exit handler,
its output flushed; as usual without a status, under coverage or a tracer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import subprocess_env

# A child process: a module-level object whose finalizer writes "teardown" (it runs only when
# the interpreter unloads modules), a non-daemon thread that finishes after the main thread, an
# exit handler registered after end_quickly's, output left in the buffers, then sys.exit(4).
EXITING = "latentseg.exiting"
SCRIPT = f"""
import atexit, sys, threading, time
from pathlib import Path
from {EXITING} import end_quickly, set_status

out = Path(sys.argv[1])
end_quickly()

class Finalized:
    def __del__(self):
        (out / "teardown").write_text("ran")

KEEP = Finalized()
gate = threading.Event()

def late():
    gate.wait()
    (out / "thread").write_text("done")

threading.Thread(target=late).start()
atexit.register(lambda: (out / "handler").write_text(str((out / "thread").exists())))
sys.stdout.write("unflushed output")
if sys.argv[2] == "status":
    set_status(4)
gate.set()
sys.exit(4)
"""


def run_child(tmp_path, mode: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), mode],
        env=env or subprocess_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_with_a_status_the_process_ends_after_threads_and_handlers_without_teardown(tmp_path):
    done = run_child(tmp_path, "status")
    assert done.returncode == 4, done.stderr
    assert done.stdout == "unflushed output"
    assert (tmp_path / "thread").read_text() == "done"  # the non-daemon thread was joined
    assert (tmp_path / "handler").read_text() == "True"  # a later handler ran, after it
    assert not (tmp_path / "teardown").exists()  # the modules were not unloaded


@pytest.mark.parametrize("mode", ["no status", "coverage"])
def test_without_a_status_or_under_coverage_the_interpreter_ends_as_usual(tmp_path, mode):
    env = subprocess_env()
    if mode == "coverage":  # a tool that writes at teardown is loaded: its data must not be lost
        env["PYTHONPATH"] = f"{tmp_path / 'tools'}:{env['PYTHONPATH']}"
        (tmp_path / "tools").mkdir()
        (tmp_path / "tools" / "coverage.py").write_text("")
        (tmp_path / "tools" / "sitecustomize.py").write_text("import coverage\n")
    done = run_child(tmp_path, "status" if mode == "coverage" else "none", env)
    assert done.returncode == 4, done.stderr
    assert done.stdout == "unflushed output"
    assert (tmp_path / "handler").read_text() == "True"
    assert (tmp_path / "teardown").read_text() == "ran"


def test_the_command_line_ends_with_its_exit_code(tmp_path):
    """`latentseg` ends through it: the code of a bad input, and a command's output, arrive."""
    command = [sys.executable, "-m", "latentseg.cli"]
    bad = subprocess.run([*command, "study", str(tmp_path / "nosuch.yaml")],
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: study spec file not found")
    listed = subprocess.run([*command, "models"], env=subprocess_env(), capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert listed.returncode == 0 and "tutorial" in listed.stdout


def test_the_forkserver_module_ends_its_server_without_teardown(tmp_path):
    """Imported first by the server study workers are forked from: once it is stopped, the
    server ends at once, with 0 (nobody reads its status), without unloading what it preloaded."""
    module = "latentseg.study.forkserver_exit"
    code = (
        f"import sys\nfrom pathlib import Path\nimport {module}\n"
        "class Finalized:\n"
        "    def __del__(self):\n"
        f"        Path({str(tmp_path)!r}, 'teardown').write_text('ran')\n"
        "KEEP = Finalized()\n"
        "raise SystemExit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "teardown").exists()
