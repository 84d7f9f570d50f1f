"""Hostile input and network exposure (issue 8, items 9, 10, 12, 13, 14): bad configs and
dataset folders through the real CLI exit 2 naming the file and create nothing; YAML
``!!python`` tags never run; ``latentseg ui`` / ``server`` bind to loopback by default and
MLflow's host check refuses foreign Host headers; registry clashes name both modules."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from latentseg.cli import main
from latentseg.errors import RegistryError
from latentseg.registry import Registry
from tests.conftest import ROOT, TINY, deep_update, subprocess_env
from tests.data.folders import make_folder, palette_png, scene
from tests.helpers_processes import free_port, stop_server

pytestmark = pytest.mark.slow

BASE = "model:\n  variant: tutorial\n"


def snapshot(root: Path) -> set[str]:
    """Every path under ``root``: what a failed command must leave unchanged (no MLflow
    store, artifacts, checkpoints or Optuna journal)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """``latentseg ARGS`` in this process; (exit code, stderr). An uncaught exception fails."""
    code = main(args)
    return code, capsys.readouterr().err


def assert_clean_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err  # one clear line
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# ---------------------------------------------------------------- item 9: bad configs, real CLI

# (file text, what the message must name: file:line or key, the hint)
BAD_EXPERIMENTS = {
    "misspelt key": (
        BASE + "optim:\n  lr: 0.01\n  weight_decai: 0.1\n",
        ["bad.yaml:5", "optim.weight_decai", "Did you mean 'weight_decay'"],
    ),
    "wrong type": ("train:\n  epochs: many\n", ["bad.yaml:2", "train.epochs", "valid integer"]),
    "out of range": ("optim:\n  lr: -1\n", ["bad.yaml:2", "optim.lr", "greater than 0"]),
    "empty file": ("", ["bad.yaml", "empty", "expected a mapping"]),
    "yaml syntax": (
        "train:\n  epochs: 3\n   seed: 4\n",
        ["bad.yaml:3", "YAML syntax error", "mapping values are not allowed"],
    ),
    "missing file": (None, ["bad.yaml", "not found"]),
    "bad --set value": (BASE, ["--set 'optim.lr=[1,'", "not valid YAML"]),
}

BAD_STUDIES = {
    "misspelt key": (
        "experiment: base.yaml\nsamplr: grid\n",
        ["bad.yaml:2", "'samplr'", "Did you mean 'sampler'"],
    ),
    "wrong type": (
        "experiment: base.yaml\nn_trials: many\n",
        ["bad.yaml:2", "n_trials", "valid integer"],
    ),
    "out of range": (
        "experiment: base.yaml\nn_trials: 0\n",
        ["bad.yaml:2", "n_trials", "greater than or equal to 1"],
    ),
    "empty file": ("", ["bad.yaml", "empty", "expected a mapping"]),
    "yaml syntax": (
        "experiment: base.yaml\nn_trials: 3\n  seeds: 4\n",
        ["bad.yaml:3", "YAML syntax error", "mapping values are not allowed"],
    ),
    "missing base experiment": (
        "experiment: missing.yaml\n",
        ["bad.yaml", "base experiment not found: missing.yaml", "looked for"],
    ),
    "bad base experiment": (
        "experiment: worse.yaml\n",
        ["worse.yaml:4", "optim.weight_decai", "Did you mean 'weight_decay'"],
    ),
}


@pytest.mark.parametrize("case", BAD_EXPERIMENTS)
def test_a_bad_experiment_exits_2_naming_file_line_and_hint_and_creates_nothing(
    tmp_path, capsys, case
):
    text, fragments = BAD_EXPERIMENTS[case]
    if text is not None:
        (tmp_path / "bad.yaml").write_text(text)
    before = snapshot(tmp_path)
    extra = ["--set", "optim.lr=[1,"] if case == "bad --set value" else []
    code, err = run_cli(["train", "bad.yaml", "--no-progress", *extra], capsys)
    assert_clean_error(code, err, *fragments)
    assert snapshot(tmp_path) == before  # no mlruns/, mlflow.db, artifacts or checkpoints


@pytest.mark.parametrize("case", BAD_STUDIES)
def test_a_bad_study_exits_2_naming_file_line_and_hint_and_creates_nothing(tmp_path, capsys, case):
    text, fragments = BAD_STUDIES[case]
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "worse.yaml").write_text(BASE + "optim:\n  weight_decai: 0.1\n")
    (tmp_path / "bad.yaml").write_text(text)
    before = snapshot(tmp_path)
    code, err = run_cli(["study", "bad.yaml", "--no-progress"], capsys)
    assert_clean_error(code, err, *fragments)
    assert snapshot(tmp_path) == before  # no MLflow store and no Optuna journal


# ------------------------------------------------------- item 10: broken dataset folders, train


def break_one(root: Path, defect: str) -> str:
    """Put one defect into a folder dataset; the offending file, relative to ``root``."""
    if defect == "missing mask":
        (root / "masks" / "img001.png").unlink()
        return "images/img001.jpg"
    if defect == "size mismatch":
        palette_png(scene(2, size=16)[1], root / "masks" / "img002.png")
        return "masks/img002.png"
    if defect == "label out of range":
        labels = scene(3)[1]
        labels[0, 0] = 9
        palette_png(labels, root / "masks" / "img003.png")
        return "masks/img003.png"
    if defect == "corrupt image bytes":
        (root / "images" / "img004.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated, not a JPEG")
        return "images/img004.jpg"
    raise AssertionError(defect)


def folder_experiment(tmp_path: Path, root: Path) -> Path:
    config = deep_update(
        TINY,
        {
            "data": {
                "dataset": "folder",
                "params": {"root": str(root)},
                "train_size": None,
                "val_size": None,
                "test_size": None,
            },
            "train": {"epochs": 1},
        },
    )
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


DEFECTS = ["missing mask", "size mismatch", "label out of range", "corrupt image bytes"]


@pytest.mark.parametrize("defect", DEFECTS)
def test_train_on_a_broken_folder_exits_2_naming_the_file_before_any_run(tmp_path, capsys, defect):
    root = make_folder(tmp_path / "data", count=10)
    bad = break_one(root, defect)
    path = folder_experiment(tmp_path, root)
    before = snapshot(tmp_path)
    code = main(["train", str(path), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert bad in captured.err and "Traceback" not in captured.err + captured.out
    assert snapshot(tmp_path) == before  # no MLflow store: the check runs before any run


def test_every_folder_defect_is_named_by_the_cli_process_without_a_traceback(tmp_path):
    root = make_folder(tmp_path / "data", count=10)
    bad = [break_one(root, defect) for defect in DEFECTS]
    path = folder_experiment(tmp_path, root)
    done = subprocess.run(
        [sys.executable, "-m", "latentseg.cli", "train", str(path), "--no-progress"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert all(name in done.stderr for name in bad), done.stderr
    assert not (tmp_path / "mlruns").exists()


# ---------------------------------------------------- item 12: YAML tags that would run code

PAYLOADS = {
    "apply": '!!python/object/apply:os.system ["touch {sentinel}"]',
    "new": '!!python/object/new:os.system ["touch {sentinel}"]',
}


@pytest.mark.parametrize("tag", PAYLOADS)
@pytest.mark.parametrize("where", ["train config", "study spec", "study base", "--set value"])
def test_python_tags_are_config_errors_and_the_payload_never_runs(tmp_path, capsys, tag, where):
    sentinel = tmp_path / "SENTINEL"
    payload = PAYLOADS[tag].format(sentinel=sentinel)
    (tmp_path / "base.yaml").write_text(BASE)
    if where == "train config":
        (tmp_path / "x.yaml").write_text(f"model: {payload}\n")
        args = ["train", "x.yaml"]
    elif where == "study spec":
        (tmp_path / "x.yaml").write_text(f"experiment: base.yaml\nname: {payload}\n")
        args = ["study", "x.yaml"]
    elif where == "study base":
        (tmp_path / "evil.yaml").write_text(f"train: {payload}\n")
        (tmp_path / "x.yaml").write_text("experiment: evil.yaml\n")
        args = ["study", "x.yaml"]
    else:
        (tmp_path / "x.yaml").write_text(BASE)
        args = ["train", "x.yaml", "--set", f"model.variant={payload}"]
    before = snapshot(tmp_path)
    code, err = run_cli([*args, "--no-progress"], capsys)
    assert_clean_error(code, err, f"python/object/{tag}:os.system")
    assert not sentinel.exists()  # the payload never ran
    assert snapshot(tmp_path) == before


def test_a_python_tag_in_a_folders_classes_yaml_never_runs(tmp_path, capsys):
    sentinel = tmp_path / "SENTINEL"
    root = make_folder(tmp_path / "data", count=10)
    (root / "classes.yaml").write_text(
        f"names: {PAYLOADS['apply'].format(sentinel=sentinel)}\nignore_index: 255\n"
    )
    path = folder_experiment(tmp_path, root)
    code, err = run_cli(["train", str(path), "--no-progress"], capsys)
    assert code == 2 and "classes.yaml" in err and "Traceback" not in err, err
    assert not sentinel.exists() and not (tmp_path / "mlruns").exists()


# ------------------------------------------- item 13: ui and server listen on loopback only


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback, or None."""
    candidates = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, contextlib.suppress(OSError):
        probe.connect(("192.0.2.1", 9))  # a UDP connect sends nothing; it picks the interface
        candidates.append(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    for address in candidates:
        ip = ipaddress.ip_address(address)
        if not ip.is_loopback and not ip.is_unspecified:
            return address
    return None


def listening_addresses(port: int, group: int) -> set[str]:
    """Local addresses of the TCP sockets in LISTEN state on ``port`` (from /proc/net) that
    the processes of process group ``group`` hold: another test's server may listen on the
    same port meanwhile (and then answer for it)."""
    owned = group_sockets(group)
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port or inode not in owned:
                continue
            raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
            found.add(str(ipaddress.ip_address(packed)))
    return found


def group_sockets(group: int) -> set[str]:
    """The inodes of the sockets that the processes of process group ``group`` hold open."""
    inodes = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) != group:
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return inodes


def serve(args_for, cwd: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """``latentseg`` with ``args_for(port)`` on a free port, once it listens there itself;
    another port when another process took that one first (parallel tests start servers
    too): then this server exits, or what answers on the port is not this server."""
    for _ in range(3):
        port = free_port()
        process = start(args_for(port), cwd, log)
        try:
            wait_up(port, process, log)
        except AssertionError:
            if "already in use" not in log.read_text().lower():
                raise
            continue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not listening_addresses(port, process.pid):
            time.sleep(0.2)
        if listening_addresses(port, process.pid):
            return process, port
        stop_server(process)
    raise AssertionError(f"no free port held in 3 tries: {log.read_text()}")


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "latentseg.cli", *args],
            cwd=cwd, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def get(url: str, host: str | None = None) -> int:
    """HTTP status of GET ``url``, optionally with a given Host header."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_up(port: int, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited {process.returncode}: {log.read_text()}")
        try:
            if get(f"http://127.0.0.1:{port}/health") == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"server did not come up: {log.read_text()}")


def make_default_store(cwd: Path) -> None:
    """The project's default store (``mlruns/mlflow.db`` under ``cwd``), which ``ui`` needs;
    named by its absolute path, as MLflow caches stores by URI across working folders."""
    (cwd / "mlruns").mkdir()
    MlflowClient(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}").search_experiments()


SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"  # host-checked, unlike /health


@pytest.mark.parametrize("command", ["ui", "server"])
def test_ui_and_server_listen_on_loopback_only_by_default(tmp_path, command):
    if command == "ui":
        make_default_store(tmp_path)
    log = tmp_path / "server.log"
    process, port = serve(lambda port: [command, "--port", str(port)], tmp_path, log)
    try:
        assert listening_addresses(port, process.pid) == {"127.0.0.1"}
        assert get(f"http://127.0.0.1:{port}{SEARCH}") == 200
        address = non_loopback_ipv4()
        if address is None:
            pytest.skip("SKIPPED LOUDLY: this machine has no non-loopback IPv4 to connect from")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5).close()
    finally:
        stop_server(process)
    assert f"http://127.0.0.1:{port}" in log.read_text()


@pytest.mark.parametrize("command", ["ui", "server"])
def test_on_all_interfaces_a_foreign_host_header_is_refused(tmp_path, command, monkeypatch):
    """A foreign Host header is refused (403); on the team server, an allowed one reaches
    the login (401: it asks who the client is), on the UI the store."""
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "adm1n-hostile-test")
    if command == "ui":  # no --allowed-hosts: MLflow's default (localhost, private addresses)
        make_default_store(tmp_path)

    def args_for(port: int) -> list[str]:
        args = [command, "--host", "0.0.0.0", "--port", str(port)]
        if command == "server":
            args += ["--allowed-hosts", f"mlflow.lab.example:{port}", "--workers", "1"]
        return args

    log = tmp_path / "server.log"
    process, port = serve(args_for, tmp_path, log)
    allowed = f"localhost:{port}" if command == "ui" else f"mlflow.lab.example:{port}"
    try:
        assert listening_addresses(port, process.pid) & {"0.0.0.0", "::"}
        url = f"http://{non_loopback_ipv4() or '127.0.0.1'}:{port}{SEARCH}"
        assert get(url, host="evil.example") == 403
        assert get(url, host=f"evil.example:{port}") == 403
        assert get(url, host=allowed) == (200 if command == "ui" else 401)
    finally:
        stop_server(process)


# ------------------------------------------------- item 14: registry clashes and broken plugins


def test_a_duplicate_builtin_name_raises_naming_both_modules():
    registry = Registry("widget")
    registry.register(json.loads, name="parse")
    with pytest.raises(RegistryError) as info:
        registry.register(yaml.safe_load, name="parse")
    message = str(info.value)
    assert "'parse'" in message and "json.loads" in message and "yaml.safe_load" in message
    assert registry.get("parse") is json.loads  # the first one is kept


def fake_distribution(site: Path, name: str, entries: dict[str, str], modules: dict[str, str]):
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[latentseg.datasets]\n{lines}\n")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)


def datasets_cli(site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env["PYTHONPATH"] = f"{site}{os.pathsep}{ROOT}"
    return subprocess.run(
        [sys.executable, "-m", "latentseg.cli", "datasets", "--json"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_two_plugins_with_one_name_exit_2_naming_both_modules(tmp_path):
    site = tmp_path / "site"
    builder = "def build(**params):\n    raise RuntimeError('never built')\n"
    fake_distribution(site, "alpha", {"stripes": "alpha_plugin:build"}, {"alpha_plugin": builder})
    fake_distribution(site, "beta", {"stripes": "beta_plugin:build"}, {"beta_plugin": builder})
    done = datasets_cli(site, tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "'stripes'" in done.stderr
    assert "alpha_plugin" in done.stderr and "beta_plugin" in done.stderr


def test_a_broken_plugin_warns_and_the_cli_still_lists_the_rest(tmp_path):
    site = tmp_path / "site"
    fake_distribution(
        site,
        "broken",
        {"broken": "broken_plugin:build"},
        {"broken_plugin": "raise ImportError('missing dependency qux')\n"},
    )
    fake_distribution(site, "good", {"stripes2": "json:loads"}, {})
    done = datasets_cli(site, tmp_path)
    assert done.returncode == 0, done.stderr
    names = {row["name"] for row in json.loads(done.stdout)}
    assert {"shapes", "stripes2"} <= names and "broken" not in names
    assert "warning:" in done.stderr and "missing dependency qux" in done.stderr
    assert "Traceback" not in done.stderr
