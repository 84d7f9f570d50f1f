import json
import re
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import entry_points

import pytest

from latentseg.cli import build_parser, main, server_command
from tests.conftest import subprocess_env
from tests.helpers_processes import free_port

COMMANDS = ["train", "study", "report", "noise", "models", "datasets", "bench", "ui", "server"]
# What each command needs besides flags to parse: a config, a spec, a study name.
POSITIONALS = {
    "train": ["x.yaml"],
    "study": ["s.yaml"],
    "report": ["--study", "s"],
    "noise": ["x.yaml"],
}


def test_models_lists_variants_with_params_and_flops(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in out[1:]}
    assert len(rows) >= 4 and {"tutorial", "no-expert"} <= set(rows)
    assert (
        "70,466" in rows["tutorial"] and "0.247" in rows["tutorial"]
    )  # params, GFLOP per 128x128 image
    assert main(["models", "latents-*", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in data] == ["latents-32", "latents-4", "latents-8"]
    assert all(r["params"] > 0 and r["flops_per_image"] > 0 for r in data)


def test_datasets_lists_the_builtins(capsys):
    assert main(["datasets", "--json"]) == 0
    names = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert names["shapes"]["classes"] == ["background", "circle", "rectangle", "triangle"]
    assert names["noise"]["num_classes"] == 2


@pytest.mark.parametrize(
    "yaml_text,args,expected",
    [
        ("model:\n  num_latnts: 8\n", [], "Did you mean 'num_latents'"),
        ("model:\n  variant: sede\n", [], "Unknown model 'sede'"),
        ("data:\n  dataset: shapez\n", [], "Unknown dataset 'shapez'"),
        ("data:\n  params: {image_size: 30}\n", [], "multiple of 4"),
        ("train:\n  epochs: 3\n   seed: 4\n", [], "YAML syntax error"),
        ("", [], "empty"),
        ("model:\n  variant: tutorial\n", ["--set", "optim.lr"], "KEY=VALUE"),
        ("model:\n  variant: tutorial\n", ["--set", "optim.lr=-1"], "optim.lr"),
        ("model:\n  latent_dim: 60\n  num_heads: 8\n", [], "divisible by num_heads"),
    ],
)
def test_bad_input_exits_2_with_a_clear_error_and_creates_nothing(
    tmp_path, capsys, yaml_text, args, expected
):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    assert main(["train", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err
    assert not (tmp_path / "mlruns").exists()  # no MLflow store, run or checkpoint


def test_the_old_variant_name_seed_is_a_one_line_note(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  variant: seed\n  latent_dim: 60\n  num_heads: 8\n")
    assert main(["train", str(path)]) == 2  # stops at the model check, after the name
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "note: the model 'seed' is now called 'tutorial'; the old name still works"
    assert err[1].startswith("error: ") and "divisible by num_heads" in err[1]


def test_missing_config_and_bad_flags_exit_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["models", "--frobnicate"])
    assert info.value.code == 2
    assert main(["models", "nothing-matches-*"]) == 2
    capsys.readouterr()
    assert main(["datasets", "shapez"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: no dataset matches 'shapez'; `latentseg datasets` lists them all"
    ]


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: latentseg" in capsys.readouterr().out


def test_python_m_latentseg_cli_lists_every_command():
    done = subprocess.run(
        [sys.executable, "-m", "latentseg.cli", "--help"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert re.findall(r"^ {4}([a-z]+)", done.stdout, re.MULTILINE) == COMMANDS


def test_the_latentseg_script_runs_the_cli_main():
    (script,) = entry_points(group="console_scripts", name="latentseg")
    assert script.load() is main


def test_help_loads_neither_torch_nor_mlflow():
    probe = (
        "import sys\n"
        "from latentseg.cli import main\n"
        "try:\n"
        "    main(['study', '--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0\n"
        "print(sorted(m for m in ('torch', 'mlflow', 'optuna', 'pandas') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_flag_is_one_error_line_under_the_usage_and_exit_2(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, *POSITIONALS.get(command, []), "--frobnicate"])
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "latentseg: error: unrecognized arguments: --frobnicate"
    assert err[0].startswith("usage: latentseg")
    assert all(line.startswith(("usage:", " ")) for line in err[:-1])


@pytest.mark.parametrize(
    "args,message",
    [
        (["bench", "--batch-size", "0"], "latentseg bench: error: argument --batch-size: must be at least 1, got 0"),
        (["datasets", "--max-samples", "0"], "latentseg datasets: error: argument --max-samples: must be at least 1, got 0"),
        (["models", "--image-size", "30"], "latentseg models: error: argument --image-size: must be a multiple of 4 between 8 and 4096, got 30"),
        (["ui", "--port", "x"], "latentseg ui: error: argument --port: invalid int value: 'x'"),
        (["server", "--port", "x"], "latentseg server: error: argument --port: invalid int value: 'x'"),
        (["report", "--study", "s", "--correction", "fdr"], "latentseg report: error: argument --correction: invalid choice: 'fdr'"),
    ],
)  # fmt: skip
def test_a_bad_flag_value_is_one_error_line_and_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(message) and sum("error:" in line for line in err) == 1


@pytest.mark.parametrize("command", ["train", "study", "report", "ui"])
def test_every_command_with_a_store_reads_tracking_uri_the_same_way(command):
    parser = build_parser()
    line = [command, *POSITIONALS.get(command, [])]
    assert parser.parse_args(line).tracking_uri is None  # the command's default store
    for flag in (["--tracking-uri", "sqlite:///a.db"], ["--tracking-uri=sqlite:///a.db"]):
        assert parser.parse_args([*line, *flag]).tracking_uri == "sqlite:///a.db"


@pytest.mark.parametrize("command", ["ui", "server"])
def test_every_server_binds_loopback_port_5000_unless_told(command):
    parser = build_parser()
    args = parser.parse_args([command])
    assert (args.host, args.port) == ("127.0.0.1", 5000)
    args = parser.parse_args([command, "--host", "0.0.0.0", "--port", "8080"])
    assert (args.host, args.port) == ("0.0.0.0", 8080)


@pytest.mark.parametrize("command", ["models", "datasets"])
def test_every_listing_takes_json_the_same_way(command):
    parser = build_parser()
    assert parser.parse_args([command]).json is False
    assert parser.parse_args([command, "--json"]).json is True
    assert parser.parse_args([command, "x*", "--json"]).json is True


@pytest.fixture
def http_answering():
    """``http_answering(status)`` -> the URL of a loopback HTTP server that answers every GET
    with ``status`` (200 on ``/health``: what a tracking server answers)."""
    import http.server
    import threading

    servers = []

    def start(status: int) -> str:
        class Answer(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the name http.server calls
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_ui_refuses_a_tracking_server(http_answering, capsys):
    url = http_answering(200)
    assert main(["ui", "--tracking-uri", url]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {url} is already a tracking server: open it in a browser\n"


def test_the_ui_says_nothing_answers_at_a_server_address_in_one_line(http_answering, capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["ui", "--tracking-uri", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: nothing answers at {url} (") and "Connection refused" in err
    assert "start the tracking server there" in err and err.count("\n") == 1
    other = http_answering(404)  # something else answers there
    assert main(["ui", "--tracking-uri", other]) == 2
    err = capsys.readouterr().err
    assert f"{other} answers, but not as an MLflow tracking server (HTTP 404" in err


def test_the_server_gets_a_postgresql_password_in_its_environment_only(tmp_path):
    args = build_parser().parse_args(
        [
            "server",
            "--backend-store-uri",
            "postgresql://mlflow:s3cret@db-host/mlflow",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ]
    )
    command, env, warnings, _ = server_command(args)
    assert env["PGPASSWORD"] == "s3cret" and "s3cret" not in " ".join(command)
    assert command[command.index("--backend-store-uri") + 1] == "postgresql://mlflow@db-host/mlflow"
    assert command[command.index("--artifacts-destination") + 1] == str(tmp_path / "artifacts")
    assert (tmp_path / "artifacts").is_dir() and not warnings
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"  # no GenAI job runner


@pytest.mark.slow
def test_train_prints_the_run_id_and_how_to_open_the_ui(tiny_yaml, tracking_uri, capsys):
    path = tiny_yaml({"tracking": {"attention_plots": False}})
    assert (
        main(
            [
                "train",
                str(path),
                "--tracking-uri",
                tracking_uri,
                "--set",
                "train.epochs=1",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "FINISHED" in out and "latentseg ui" in out and "#/experiments/" in out


@pytest.mark.slow
def test_ui_serves_the_project_store_on_loopback(tiny, tracking_uri, tmp_path):
    from latentseg.tracking import run_experiment

    run = run_experiment(
        tiny({"train": {"epochs": 1}, "tracking": {"attention_plots": False}}),
        tracking_uri=tracking_uri,
        progress=False,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "latentseg.cli",
            "ui",
            "--tracking-uri",
            tracking_uri,
            "--port",
            str(port),
        ],
        env=subprocess_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("MLflow UI did not come up")
        with urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/runs/get?run_id={run.run_id}", timeout=10
        ) as response:
            assert json.load(response)["run"]["info"]["status"] == "FINISHED"
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}" in output
    with pytest.raises(OSError):  # stopped with every worker it started
        urllib.request.urlopen(base + "/health", timeout=2)


def test_ui_without_a_store_is_a_clear_error(tmp_path, capsys):
    assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "no tracking store" in capsys.readouterr().err


def test_report_on_a_missing_store_is_a_clear_error_and_creates_no_store(tmp_path, capsys):
    store = tmp_path / "typo" / "mlflow.db"
    assert main(["report", "--study", "quick", "--tracking-uri", f"sqlite:///{store}"]) == 2
    assert f"no tracking store at {store}" in capsys.readouterr().err
    assert not store.parent.exists()  # a report only reads: no empty store left behind


@pytest.mark.parametrize(
    "spec,args,expected",
    [
        (
            "experiment: base.yaml\nsearch_space: {model.num_latnts: [4]}\n",
            [],
            "Did you mean 'num_latents'",
        ),
        ("experiment: missing.yaml\n", [], "base experiment not found"),
        ("experiment: base.yaml\nsamplr: grid\n", [], "unknown key 'samplr'"),
        (
            "experiment: base.yaml\n",
            ["--workers", "2", "--storage", "sqlite:///o.db"],
            "SQLite is not safe",
        ),
        ("experiment: base.yaml\n", ["--workers", "0"], "--workers must be >= 1"),
        ("experiment: base.yaml\n", ["--n-trials", "0"], "--n-trials must be >= 1"),
        ("experiment: base.yaml\n", ["--set", "optim.lr=-1"], "optim.lr"),
    ],
)
def test_bad_study_input_exits_2_and_creates_nothing(tmp_path, capsys, spec, args, expected):
    (tmp_path / "base.yaml").write_text("model:\n  variant: tutorial\n")
    (tmp_path / "study.yaml").write_text(spec)
    assert main(["study", str(tmp_path / "study.yaml"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err
    assert not (tmp_path / "mlruns").exists()
