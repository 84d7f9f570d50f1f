"""The Ray backend (``latentseg study SPEC --ray``) on a real Ray cluster: a head and a second
node started on 127.0.0.1 from their own temporary folders, a real PostgreSQL study storage
and a real ``latentseg server``; and its refusals before anything starts."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from latentseg.errors import ConfigError
from latentseg.study.ray_workers import INSTALL_HINT, check_fits, check_reachable
from tests.conftest import subprocess_env, trial_held_at
from tests.helpers_processes import free_port, start_server, stop_server, wait_healthy
from tests.helpers_ray import HEAD_IP, ray_env, start_cluster

GRID = {"model.num_latents": [2, 4], "model.expert_attention": [True, False]}
POINTS = [(2, False), (2, True), (4, False), (4, True)]


# ---------------------------------------------------------------- refusals (no cluster needed)


@pytest.mark.parametrize(
    ("storage", "tracking", "says"),
    [
        (None, "http://127.0.0.1:5000", "--storage postgresql://"),
        ("journal:/data/j.log", "http://127.0.0.1:5000", "--storage postgresql://"),
        ("sqlite:///optuna.db", "http://127.0.0.1:5000", "--storage postgresql://"),
        ("postgresql://u@db/optuna", "sqlite:///mlruns/mlflow.db", "--tracking-uri http://"),
        ("postgresql://u@db/optuna", "mlruns", "--tracking-uri http://"),
    ],
)
def test_a_cluster_of_several_nodes_refuses_stores_only_this_machine_reads(storage, tracking, says):
    with pytest.raises(ConfigError, match=says):
        check_reachable(2, storage, tracking)
    check_reachable(1, storage, tracking)  # one node: this machine's files are fine
    check_reachable(3, "postgresql://u@db/optuna", "http://mlflow-host:5000")


def test_without_ray_the_study_says_how_to_install_it_and_exits_2(study_spec, tmp_path):
    path = study_spec({"name": "noray", "search_space": {"model.num_latents": [2, 4]},
                       "sampler": {"name": "grid"}})  # fmt: skip
    # Ray made unimportable in that process alone, as on a machine without the extra
    code = (
        "import sys; sys.modules['ray'] = None; from latentseg.cli import main; "
        f"sys.exit(main(['study', {str(path)!r}, '--ray', '--no-progress']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: {INSTALL_HINT}"
    assert not (tmp_path / "mlruns").exists()  # nothing started


@pytest.mark.parametrize("kind", ["malformed", "nothing listening", "not a Ray cluster"])
def test_a_bad_ray_address_is_one_line_and_exit_2_before_anything_starts(
    kind, study_spec, tmp_path
):
    path = study_spec({"name": "badray", "search_space": {"model.num_latents": [2, 4]},
                       "sampler": {"name": "grid"}})  # fmt: skip
    with contextlib.ExitStack() as stack:
        if kind == "malformed":
            address, says = "ray://:10001", "expected auto, HOST:PORT or ray://HOST:10001"
        elif kind == "nothing listening":
            address, says = f"127.0.0.1:{free_port()}", "nothing answers at 127.0.0.1:"
        else:  # a port that accepts connections and never speaks Ray (a dashboard, a database)
            listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
            address = f"127.0.0.1:{listener.getsockname()[1]}"
            says = "could not join a Ray cluster: no Ray cluster answered there within 3 s"
        env = {**subprocess_env(), "LATENTSEG_RAY_JOIN_TIMEOUT_S": "3"}
        done = subprocess.run(
            [sys.executable, "-m", "latentseg.cli", "study", str(path), "--ray", address,
             "--no-progress"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    # one error line; Ray's own join thread, given up on, may still log after it under load
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith(f"error: --ray {address}: ") and says in line, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "mlruns").exists()  # nothing started


def node(cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    """A node as ``ray.nodes()`` describes it (the fields check_fits reads)."""
    return {"Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


def test_a_worker_no_node_can_hold_is_refused_on_a_local_ray_and_a_note_on_a_cluster(capsys):
    check_fits([node(2), node(8, 1)], 4, 1, local=False)  # the second node holds it
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match=r"asks for 1 CPU\(s\) and 1 GPU\(s\).*offers 2 CPU"):
        check_fits([node(2)], 1, 1, local=True)
    check_fits([node(2), node(4)], 8, 0, local=False)  # an autoscaler may add a bigger node
    assert capsys.readouterr().err.startswith("note: resources: each worker asks for 8 CPU(s)")


@pytest.mark.slow
def test_a_local_ray_refuses_a_spec_asking_for_a_gpu_it_has_not(study_spec, tmp_path):
    path = study_spec({"name": "gpuless", "search_space": {"model.num_latents": [2, 4]},
                       "sampler": {"name": "grid"}, "resources": {"cpus": 1, "gpus": 1}})  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "latentseg.cli", "study", str(path), "--ray", "--no-progress"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --ray: resources: each worker asks for 1 CPU(s) and 1 GPU(s)")
    assert not list(tmp_path.glob("mlruns/optuna/*")), "no trial was queued"


def test_ray_addresses_name_the_host_and_port_to_probe():
    from latentseg.study.ray_workers import host_and_port

    assert host_and_port("local") is None and host_and_port("auto") is None
    assert host_and_port("head:6379") == ("head", 6379)
    assert host_and_port("ray://10.0.0.5:10001") == ("10.0.0.5", 10001)
    assert host_and_port("[::1]:6379") == ("::1", 6379)
    for bad in ("head", "head:port", "head:0", "ray://:10001", "http://head/x:1"):
        with pytest.raises(ConfigError, match="expected auto, HOST:PORT"):
            host_and_port(bad)


def test_the_ray_flag_takes_an_optional_address():
    from latentseg.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["study", "s.yaml"]).ray is None
    assert parse(["study", "s.yaml", "--ray"]).ray == "local"
    assert parse(["study", "s.yaml", "--ray", "auto"]).ray == "auto"
    assert parse(["study", "s.yaml", "--ray", "ray://head:10001"]).ray == "ray://head:10001"


# ---------------------------------------------------------------- a real cluster


@pytest.fixture(scope="module")
def ray_cluster():
    """One cluster for the module's tests: a head and a second node on loopback,
    ``(port, head, second)``; both stopped after the module's last test. The test that stops
    the second node comes last in the module; the token test needs the head alone."""
    port = free_port()
    head, second = start_cluster(port)
    try:
        yield port, head, second
    finally:
        second.cleanup()
        head.cleanup()


@pytest.fixture(scope="module")
def module_postgres():
    """``make()`` -> a fresh PostgreSQL database for this module's tests, all dropped after
    the module; skips (loudly) where no server is reachable."""
    from latentseg.bench.overheads import scratch_database
    from tests.conftest import _postgres_url

    base, reason = _postgres_url()
    if base is None:
        pytest.skip(f"SKIPPED LOUDLY: the Ray tests need a PostgreSQL server: {reason}")
    with contextlib.ExitStack() as made:
        yield lambda: made.enter_context(scratch_database(base + "postgres", "latentseg_test_"))


@pytest.fixture(scope="module")
def tracking_server(module_postgres, tmp_path_factory):
    """One ``latentseg server`` (PostgreSQL backend) for the module's tests: each test's
    study has an experiment of its own there."""
    folder = tmp_path_factory.mktemp("ray-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(module_postgres(), folder / "served", port, folder)
    try:
        wait_healthy(url, server)
        yield url
    finally:
        stop_server(server)


def launch(path, ray_port: int, storage: str, tracking: str, cwd) -> subprocess.Popen:
    env = ray_env()
    env["LATENTSEG_HEARTBEAT_INTERVAL_S"] = "2"  # a dead node's trial comes back in seconds
    env["LATENTSEG_HEARTBEAT_GRACE_S"] = "6"
    return subprocess.Popen(
        [
            sys.executable, "-m", "latentseg.cli", "study", str(path), "--workers", "2",
            "--ray", f"{HEAD_IP}:{ray_port}", "--storage", storage, "--tracking-uri", tracking,
            "--no-progress",
        ],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def grid_spec(study_spec, name: str, gate=None, runs=(0,)):
    """The grid study ``name``, one seed per point (how a Ray worker runs a trial's seeds is
    how a local one does, tested there); with ``gate``, its runs ``runs`` (the gate's
    numbering) hold before their first step."""
    return study_spec(
        {"name": name, "search_space": GRID, "sampler": {"name": "grid"}, "max_retry": 1},
        base={"data": gate.dataset(steps=[0], runs=runs)} if gate else None,
    )  # fmt: skip


def assert_each_point_once(name: str, storage: str, tracking: str) -> list:
    """Each grid point COMPLETE once (Optuna), nothing RUNNING or WAITING; no MLflow run
    RUNNING; every trial run tagged with its Ray node and worker. Returns the trials."""
    from mlflow import MlflowClient

    trials = optuna.load_study(study_name=name, storage=storage).trials
    complete = sorted(
        (t.params["model.num_latents"], t.params["model.expert_attention"])
        for t in trials
        if t.state == TrialState.COMPLETE
    )
    assert complete == POINTS, [  # what became of each attempt, to diagnose a failure
        (
            t.number,
            t.params,
            t.state.name,
            t.user_attrs.get("fail_reason"),
            t.system_attrs.get("failed_trial"),
        )
        for t in trials
    ]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    client = MlflowClient(tracking)
    experiment_id = client.get_experiment_by_name(name).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    by_type: dict[str, list] = {}
    for run in runs:
        by_type.setdefault(run.data.tags["latentseg.run_type"], []).append(run)
    finished = [r for r in by_type["trial"] if r.info.status == "FINISHED"]
    assert len(finished) == 4
    for run in by_type["trial"]:
        assert run.data.tags["latentseg.ray.node"] and run.data.tags["latentseg.ray.worker"]
    (parent,) = by_type["study"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["latentseg.ray.nodes"] == "2"
    assert '"CPU": 2.0' in parent.data.tags["latentseg.ray.cluster_resources"]
    return trials


def assert_killed_attempt_failed(trials, tracking: str) -> None:
    """The attempt that died is one FAILED trial, its MLflow run closed FAILED."""
    from mlflow import MlflowClient

    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    run = MlflowClient(tracking).get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one cluster at a time on this machine
def test_a_grid_on_two_ray_nodes_runs_each_point_once_survives_a_killed_worker_and_stops(
    ray_cluster, make_postgres_db, tracking_server, study_spec, tmp_path, make_gate
):
    port, _, _ = ray_cluster
    # refused before anything starts: two nodes and the default journal file
    path = grid_spec(study_spec, "refused")
    refused = subprocess.run(
        [sys.executable, "-m", "latentseg.cli", "study", str(path), "--ray", f"{HEAD_IP}:{port}",
         "--tracking-uri", tracking_server, "--no-progress"],
        cwd=tmp_path, env=ray_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "use --storage postgresql://" in refused.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "mlruns" / "optuna").exists()

    # the grid, two workers on two nodes, one worker process killed mid-trial (held at the
    # gate in its first seed run): Ray restarts it, its trial runs again, and each point is
    # still COMPLETE once (a grid with no fault proves nothing this one does not)
    storage, gate = make_postgres_db(), make_gate("gate-raykill")
    path = grid_spec(study_spec, "raykill", gate)
    study = launch(path, port, storage, tracking_server, tmp_path)
    owner = trial_held_at(gate, "raykill", storage, study)
    os.kill(int(owner["pid"]), signal.SIGKILL)  # later runs do not hold: the others go on
    output = study.communicate(timeout=300)[0]
    assert study.returncode == 0, output
    assert f"Ray at {HEAD_IP}" in output and "2 node(s)" in output
    trials = assert_each_point_once("raykill", storage, tracking_server)
    assert_killed_attempt_failed(trials, tracking_server)

    # Ctrl-C on the driver: the Ray workers stop, their runs end KILLED, the launch exits 130.
    # Both workers hold at the gate in their first trials until the stop reaches them (up to
    # a poll of the driver and one of the worker), so no trial can finish before it: a trial
    # that finished there left no trial run to close KILLED (seen on a clean clone)
    storage, gate = make_postgres_db(), make_gate("gate-raystop")
    path = grid_spec(study_spec, "raystop", gate, runs=(0, 1))
    study = launch(path, port, storage, tracking_server, tmp_path)
    for run in (0, 1):
        trial_held_at(gate, "raystop", storage, study, run)
    study.send_signal(signal.SIGINT)
    output = study.communicate(timeout=120)[0]
    assert study.returncode == 130, output
    trials = optuna.load_study(study_name="raystop", storage=storage).trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.COMPLETE)]
    assert [t for t in trials if t.state == TrialState.WAITING], (
        output,
        [(t.number, t.state, t.system_attrs.get("failed_trial")) for t in trials],
    )  # queued for the next launch
    from mlflow import MlflowClient

    client = MlflowClient(tracking_server)
    runs = client.search_runs([client.get_experiment_by_name("raystop").experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    statuses = {(r.data.tags["latentseg.run_type"], r.info.status) for r in runs
                if r.data.tags["latentseg.run_type"] in ("study", "trial")}  # fmt: skip
    assert statuses == {("study", "KILLED"), ("trial", "KILLED")}, output


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one cluster at a time on this machine
def test_a_head_that_refuses_the_launchs_token_is_named_with_the_fix(
    ray_cluster, study_spec, tmp_path
):
    """The module's head, with token authentication (the tests' own token): a launch with
    no token, and one with another token, each exit 2 with one line that says the
    cluster refused the token and how to give it the head's, instead of Ray's "could not
    connect" at whatever address Ray substitutes."""
    path = study_spec({"name": "token", "search_space": {"model.num_latents": [2, 4]},
                       "sampler": {"name": "grid"}})  # fmt: skip
    port = ray_cluster[0]
    address = f"{HEAD_IP}:{port}"
    # Ray's driver asks the cluster 20 times, a second apart, before it gives up on a refused
    # token (ray_constants.NUM_REDIS_GET_RETRIES): 3 times is enough to see the refusal
    retries = {"RAY_NUM_REDIS_GET_RETRIES": "3"}
    without = {**subprocess_env(), **retries}  # (the tests' environment holds no Ray token)
    other = {**without, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32}
    command = [sys.executable, "-m", "latentseg.cli", "study", str(path), "--ray", address,
               "--no-progress"]  # fmt: skip
    launches = {  # both at once: Ray retries a refused token before it gives up
        says: subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for says, env in (
            ("requires an authentication token, and this launch sends none", without),
            ("refused this launch's authentication token", other),
        )
    }
    for says, process in launches.items():
        stderr = process.communicate(timeout=180)[1]
        assert process.returncode == 2, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: --ray {address}: the Ray cluster at {address} ")
        assert says in last and "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN" in last, stderr
        assert "Traceback" not in stderr and "could not join" not in stderr
    assert not (tmp_path / "mlruns").exists()  # nothing started


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one cluster at a time on this machine
def test_a_grid_on_ray_survives_its_second_node_stopping_mid_trial(
    ray_cluster, make_postgres_db, tracking_server, study_spec, tmp_path, gate
):
    port, _, second = ray_cluster
    storage = make_postgres_db()
    # both workers (one per node) hold at the gate in their first trials
    path = grid_spec(study_spec, "raynode", gate, runs=(0, 1))
    study = launch(path, port, storage, tracking_server, tmp_path)
    owners = [trial_held_at(gate, "raynode", storage, study, run) for run in (0, 1)]
    on_second = [o for o in owners if int(o["pid"]) in second.pids()]
    assert len(on_second) == 1, (owners, second.pids())  # one worker on each node
    second.stop()  # mid-trial: its trial comes back when its heartbeat lapses
    gate.open()  # the head's worker goes on
    output = study.communicate(timeout=300)[0]
    assert study.returncode == 0, output
    trials = assert_each_point_once("raynode", storage, tracking_server)
    assert_killed_attempt_failed(trials, tracking_server)


def test_ray_workers_get_the_tracking_servers_credentials_as_an_argument_not_an_environment(
    tmp_path, monkeypatch
):
    """MLflow's credentials, from the environment or ~/.mlflow/credentials, travel to a Ray
    worker in its task's arguments: Ray's dashboard shows a task's runtime_env in plain text,
    and only LATENTSEG_* variables are put there."""
    from latentseg.study.ray_workers import FORWARDED_ENV_PREFIX
    from latentseg.tracking.opening import client_credentials as tracking_credentials

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert tracking_credentials() == {}
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        "[mlflow]\nmlflow_tracking_username = alice\nmlflow_tracking_password = from-file\n"
    )
    assert tracking_credentials() == {
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": "from-file",
    }
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "from-env")  # MLflow's order: env first
    assert tracking_credentials()["MLFLOW_TRACKING_PASSWORD"] == "from-env"
    assert not "MLFLOW_TRACKING_PASSWORD".startswith(FORWARDED_ENV_PREFIX)
