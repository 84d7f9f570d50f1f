"""Issue 28, item 4: the tracking server dies in the middle of a checkpoint upload. Training
does not wait for MLflow's minutes of retries: it goes on within seconds, finishes every
epoch, and what the server did not take stays in the tracker's outbox.

The server is a real ``mlflow server`` (served artifacts, so checkpoints travel over HTTP)
behind a loopback proxy that is the test's gate: when a checkpoint upload passes through it,
it holds the upload's bytes, kills the server and closes its own port, so to the client the
server dies mid-upload, at a moment the test chooses and not in a timing window."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import threading
import time

import pytest

from latentseg.errors import TrackingError
from latentseg.tracking.store import open_client
from latentseg.tracking.tracker import CALL_WAIT_S, MLflowTracker
from latentseg.train import TrainCallback, fit, prepare
from latentseg.train.checkpoint import load_training_state
from tests.helpers_processes import free_port, start_server, stop_server, wait_healthy

pytestmark = pytest.mark.slow

EPOCHS = 4
UPLOAD = re.compile(rb"PUT [^ ]*/artifacts/checkpoints/")


class DyingProxy:
    """A loopback TCP proxy in front of ``server`` (a Popen in its own session, listening on
    ``upstream_port``). The first request that ``UPLOAD`` matches is never forwarded: the
    proxy kills the server (SIGKILL to its process group), resets every connection and
    closes its port. ``died`` is set once the server is dead."""

    def __init__(self, server, upstream_port: int) -> None:
        self.server, self.upstream_port = server, upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.died = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.died.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the server is dying: so is this connection
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, to_server: bool) -> None:
        seen = b""
        while True:
            try:
                chunk = source.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            seen = (seen + chunk)[-8192:]
            if to_server and UPLOAD.search(seen) and not self.died.is_set():
                self._die()  # the upload is on the wire: its bytes never reach the server
                return
            try:
                target.sendall(chunk)
            except OSError:
                return

    def _die(self) -> None:
        os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait(timeout=30)
        self.close()
        self.died.set()

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                # a reset, as the kernel answers for a killed server with unread bytes
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked on it
                sock.close()


class Stopwatch(TrainCallback):
    """Placed before and after the tracker: the wall time of each of the tracker's epoch and
    checkpoint hooks, which the training loop waits for."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.waits: list[tuple[str, int, float]] = []

    def before(self) -> TrainCallback:
        watch = self

        class Before(TrainCallback):
            def on_epoch_end(self, context, metrics, improved) -> None:
                watch.started = time.perf_counter()

            def on_checkpoint(self, context, path, kind) -> None:
                watch.started = time.perf_counter()

        return Before()

    def on_epoch_end(self, context, metrics, improved) -> None:
        self.waits.append(("epoch", context.state.epoch, time.perf_counter() - self.started))

    def on_checkpoint(self, context, path, kind) -> None:
        self.waits.append((kind, context.state.epoch, time.perf_counter() - self.started))


def test_a_server_that_dies_mid_upload_stalls_training_seconds_and_keeps_the_rest(
    tiny, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("LATENTSEG_TRACKING_WAIT_S", "0")  # the end of training gives up at once
    port = free_port()
    served = tmp_path / "served"
    server = start_server(f"sqlite:///{served / 'mlflow.db'}", served / "artifacts", port, tmp_path)
    proxy = None
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server)
        proxy = DyingProxy(server, port)
        client = open_client(proxy.url)
        experiment_id = client.create_experiment("dying")
        run_id = client.create_run(experiment_id).info.run_id
        tracker = MLflowTracker(client, run_id, plots=False, log_model=False, server=proxy.url)
        watch = Stopwatch()
        prepared = prepare(tiny({"train": {"epochs": EPOCHS}}))
        checkpoints = tmp_path / "checkpoints"
        with pytest.raises(TrackingError, match="unreachable") as raised:
            fit(prepared, checkpoints, [watch.before(), tracker, watch])
        assert proxy.died.is_set(), "no checkpoint upload reached the gate"
        with capsys.disabled():
            print(f"\ntracker hooks (kind, epoch, seconds): {watch.waits}")
        # every epoch trained, each hook waited seconds at most: the first checkpoint upload,
        # cut off, for CALL_WAIT_S and one refused health check; the rest not at all
        assert load_training_state(checkpoints / "last.ckpt")["state"]["epoch"] == EPOCHS
        assert {epoch for _, epoch, _ in watch.waits} == set(range(1, EPOCHS + 1))
        stall = max(seconds for _, _, seconds in watch.waits)
        assert stall < CALL_WAIT_S + 8, watch.waits  # MLflow's own retries take minutes
        # what the server did not take is kept: every checkpoint, and the later epochs'
        # metrics and the summary, counted in the error that ends training
        assert {"last.ckpt", "best.safetensors"} <= tracker.unstored_checkpoints()
        unsent = int(re.search(r"(\d+) logging calls", str(raised.value)).group(1))
        assert unsent >= EPOCHS + 2, str(raised.value)  # metrics of epochs 2.., summary, ckpts
        assert f"the checkpoints are kept at {checkpoints}" in str(raised.value)
        assert "is unreachable; training goes on" in capsys.readouterr().err
        with pytest.warns(RuntimeWarning, match="tracking calls were not sent"):
            tracker.close()
    finally:
        if proxy is not None:
            proxy.close()
        if server.poll() is None:
            stop_server(server)
