"""MLflowTracker: a training callback that logs one run to MLflow.

One ``log_batch`` call per epoch (all scalars at once), checkpoints as artifacts, attention
plots via ``log_image(key=..., step=epoch)`` at the first, best and last epoch, ``best_*`` and
``test_*`` summary metrics at the end, and the best model as an MLflow Model.

Plots are drawn and uploaded on a background thread where a core is free, so training does
not wait for them; ``close()`` (called before the run ends, whatever its status) waits for
every upload, and the end of training raises any error one of them met, so nothing is lost
silently.

With a tracking server, an outage does not stop training: before each round of logging the
server's health is checked (a fast GET, instead of minutes of client retries), and while it
is down the epoch's metrics, checkpoints and images wait in order in memory. They are sent
once it answers again, and the end of training waits for it (``LATENTSEG_TRACKING_WAIT_S``,
default 600 s) before giving up with an error that says what was not logged.

A server that dies *during* a call is not waited for either. MLflow retries a failed request
for minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 7, backoff doubling from 2 s to 120 s) and
offers no per-client setting: every request reads those variables from the process's
environment (``mlflow.utils.rest_utils.http_request``; its callers, the REST store and the
artifact repository, pass none), and changing them would change them for all other code in
the process. So the tracker bounds what training waits for instead of MLflow's retries: each
call to a server runs on a thread of its own, and training waits for it only while the server
answers its health check (every ``CALL_WAIT_S``). When the server stops answering, the call
stays in the outbox, in flight: training goes on, and the outbox moves on once MLflow's
retries end (sent, or failed during the outage and sent again).

Checkpoints are written on this machine first (``local_checkpoints``) and uploaded after;
:meth:`MLflowTracker.unstored_checkpoints` says which of them the run's artifacts do not hold
yet (an upload failed, or waits for the server), so the caller knows when the local copy may
go.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentseg.tracking.logged import SCORES_DIR
from latentseg.tracking.model_export import log_mlflow_model
from latentseg.tracking.pictures import draw, snapshot, spare_core
from latentseg.tracking.store import server_reachable
from latentseg.train.callbacks import TrainCallback, TrainContext

# How long a hook waits for a call to the tracking server before it checks that the server
# still answers (and goes on training when it does not): a healthy server's calls take
# milliseconds, an upload of a large checkpoint longer, and that is waited for as before.
CALL_WAIT_S = 2.0


def _metric_batch(metrics: dict[str, float], step: int):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(key, float(value), now, step) for key, value in metrics.items() if value is not None
    ]


@dataclass
class _Flight:
    """A logging call under way: its outbox key, the call, and its outcome."""

    key: str
    call: Callable[[], Any]
    outcome: Future
    outlived: bool = False  # the server stopped answering while it ran


def _run(call: Callable[[], Any], outcome: Future) -> None:
    try:
        outcome.set_result(call())
    except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the outcome
        outcome.set_exception(exc)


def _timed(hook):
    """Count the hook's wall time in ``MLflowTracker.seconds``: what tracking cost training."""

    @functools.wraps(hook)
    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return hook(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    return timed


class MLflowTracker(TrainCallback):
    def __init__(
        self,
        client,
        run_id: str,
        resumed: bool = False,
        plots: bool = True,
        log_model: bool = True,
        server: str | None = None,
    ) -> None:
        self.client = client
        self.server = server  # the tracking server's URL; None for a database store
        self.local_checkpoints: Path | None = None  # where this machine keeps the checkpoints
        self._unsent: dict[str, Callable[[], Any]] = {}  # in order; a key replaces its older call
        self._in_flight: _Flight | None = None  # the call under way; kept while MLflow retries it
        self._outbox_lock = threading.Lock()
        self._outage_since: float | None = None
        self._failed_checkpoints: set[str] = set()  # names whose newest upload failed
        self.run_id = run_id
        self.resumed = resumed
        self.plots = plots
        self.log_model = log_model
        self._logged_plot_epochs: set[int] = set()
        self._last_snapshot: dict[str, Any] | None = None
        self._background: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self.seconds = 0.0  # spent in the hooks below, training waiting

    # ------------------------------------------------------------------ hooks

    @_timed
    def on_train_start(self, context: TrainContext) -> None:
        from mlflow.entities import Param

        if self.resumed:  # epochs checkpointed but not logged (a crash in between): log them now
            logged = {m.step for m in self.client.get_metric_history(self.run_id, "val_miou")}
            for entry in context.state.history:
                epoch = int(entry["epoch"])
                if epoch not in logged:
                    metrics = {key: value for key, value in entry.items() if key != "epoch"}
                    self._log_metrics(f"metrics:{epoch}", _metric_batch(metrics, epoch))
        if not self.resumed:
            params = [
                Param(key, json.dumps(value) if isinstance(value, (list, dict)) else str(value))
                for key, value in sorted(context.config.flat().items())
            ]
            for start in range(0, len(params), 100):  # MLflow's per-request limit
                batch = params[start : start + 100]
                self._send(
                    f"params:{start}",
                    lambda batch=batch: self.client.log_batch(self.run_id, params=batch),
                )
            self._log_metrics("model_stats", _metric_batch(model_stat_metrics(context.stats), 0))
            for name, payload in (
                ("config.json", context.config.model_dump(mode="json")),
                ("model_summary.json", model_summary(context)),
            ):
                self._send(f"json:{name}", functools.partial(self._log_json, payload, name))

    @_timed
    def on_epoch_end(
        self, context: TrainContext, metrics: dict[str, float], improved: bool
    ) -> None:
        epoch = context.state.epoch
        self._log_metrics(f"metrics:{epoch}", _metric_batch(metrics, epoch))
        if not self.plots:
            return
        # A forward pass over the few plot images: cheap, and the last epoch's must be taken
        # before the loop reloads the best weights for the test set.
        self._last_snapshot = snapshot(context)
        # the first epoch: something to look at in the UI early; the last: drawn while the
        # test set is evaluated, not after it
        if epoch == 1 or epoch == context.config.train.epochs:
            self._log_plots(context, self._last_snapshot, epoch)

    @_timed
    def on_checkpoint(self, context: TrainContext, path: Path, kind: str) -> None:
        self.upload_checkpoint(path)

    def upload_checkpoint(self, path: Path) -> None:
        """Upload the checkpoint file ``path`` to the run's ``checkpoints/`` artifacts (now, or
        once the tracking server answers again)."""
        self.local_checkpoints = path.parent
        # sent late, it uploads the file as it is then: the newest checkpoint of that name
        self._send(
            f"checkpoint:{path.name}",
            lambda: self.client.log_artifact(self.run_id, str(path), "checkpoints"),
        )

    def unstored_checkpoints(self) -> set[str]:
        """Names of the checkpoints whose newest local version the run's artifacts do not
        hold: its upload failed, or still waits (an unreachable server). Empty once every
        checkpoint written so far is uploaded."""
        with self._outbox_lock:
            return self._unstored()

    def _unstored(self) -> set[str]:  # the caller holds the outbox lock
        waiting = {key.split(":", 1)[1] for key in self._unsent if key.startswith("checkpoint:")}
        return waiting | self._failed_checkpoints

    @_timed
    def on_train_end(self, context: TrainContext, summary: dict[str, float]) -> None:
        self._log_metrics("summary", _metric_batch(summary, context.state.epoch))
        scores = context.test_scores
        if scores.exists():  # the report bootstraps over test images from it
            self._send(
                "scores", lambda: self.client.log_artifact(self.run_id, str(scores), SCORES_DIR)
            )
        self._wait_for_server()
        if self.plots:
            # The model holds the best weights now: its maps are the best epoch's, also
            # after a resume.
            if (
                context.state.best_epoch
                and context.state.best_epoch not in self._logged_plot_epochs
            ):
                self._log_plots(context, snapshot(context), context.state.best_epoch)
            last = self._last_snapshot
            if (
                last is not None
                and last["epoch"] == context.state.epoch
                and last["epoch"] not in self._logged_plot_epochs
            ):
                self._log_plots(context, last, last["epoch"])
        if self.log_model:
            log_mlflow_model(context, self.client, self.run_id)
        self.flush()

    def flush(self) -> None:
        """Wait for the background uploads; raise the first error one of them met."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        """Finish the background uploads before the run is closed; on a path that is already
        failing, an upload error is a warning, not a second exception."""
        try:
            if self._unsent and not self._drain():
                warnings.warn(
                    f"{len(self._unsent)} tracking calls were not sent: {self.server} is "
                    f"unreachable; {self._kept()}",
                    RuntimeWarning,
                    stacklevel=2,
                )
        except Exception as exc:  # noqa: BLE001 - the run's own outcome matters more
            warnings.warn(f"a tracking call failed: {exc}", RuntimeWarning, stacklevel=2)
        if self._background is None:
            return
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - the run's own outcome matters more
            warnings.warn(f"an attention plot was not logged: {exc}", RuntimeWarning, stacklevel=2)
        finally:
            self._background.shutdown(wait=True)
            self._background = None

    # ------------------------------------------------------------------ outbox

    def _send(self, key: str, call: Callable[[], Any]) -> None:
        """Make the logging call now, or keep it (after any older ones) while the tracking
        server is down."""
        with self._outbox_lock:
            self._unsent.pop(key, None)
            self._unsent[key] = call
        self._drain()

    def _log_metrics(self, key: str, batch: list) -> None:
        self._send(key, lambda: self.client.log_batch(self.run_id, metrics=batch))

    def _drain(self) -> bool:
        """Send the kept calls in order; False (and nothing waits) while the server is down,
        or while a call it stopped answering is still retried in the background."""
        with self._outbox_lock:
            if self._in_flight is not None and not self._in_flight.outcome.done():
                return False
            # one health check per drain: a down server is skipped in seconds, not retried
            if (
                self._in_flight is None
                and self._unsent
                and self.server is not None
                and not server_reachable(self.server)
            ):
                self._note_outage()
                return False
            while self._in_flight is not None or self._unsent:
                if self._in_flight is None:
                    key, call = next(iter(self._unsent.items()))
                    self._in_flight = _Flight(key, call, self._start(call))
                flight = self._in_flight
                if not self._answered(flight.outcome):
                    flight.outlived = True  # it goes on (MLflow's retries); training does too
                    self._note_outage()
                    return False
                self._in_flight = None
                if not self._settle(flight):
                    return False
            if self._outage_since is not None:
                print(
                    f"latentseg: tracking server {self.server} is back after "
                    f"{time.monotonic() - self._outage_since:.0f} s; the kept metrics and "
                    "artifacts are logged",
                    file=sys.stderr,
                    flush=True,
                )
                self._outage_since = None
            return True

    def _start(self, call: Callable[[], Any]) -> Future:
        """Start ``call``: on a thread of its own for a tracking server (whose calls can hang
        in MLflow's retries), in this thread for a database store."""
        outcome: Future = Future()
        if self.server is None:
            _run(call, outcome)
        else:
            threading.Thread(
                target=_run, args=(call, outcome), name="latentseg-tracking-call", daemon=True
            ).start()
        return outcome

    def _answered(self, outcome: Future) -> bool:
        """Wait for a call while its server answers; False when the server stops answering
        first (the call is left running)."""
        while not futures.wait([outcome], timeout=CALL_WAIT_S).done:
            if not server_reachable(self.server):
                return False
        return True

    def _settle(self, flight: _Flight) -> bool:
        """Take a finished call out of the outbox (unless a newer call of its key replaced it
        meanwhile); False when it failed because the server is down (it stays kept). A real
        error is raised, and not retried."""
        from mlflow.exceptions import MlflowException

        key = flight.key
        current = self._unsent.get(key) is flight.call
        try:
            flight.outcome.result()
        except OSError as exc:  # the artifact store's disk: full, quota, read-only
            self._failed_checkpoints |= {
                queued.split(":", 1)[1]
                for queued in self._unsent
                if queued.startswith("checkpoint:")
            }
            self._unsent.clear()  # the rest would fail alike; the run ends FAILED
            from latentseg.errors import StoreWriteError

            raise StoreWriteError(
                f"cannot write {key.split(':', 1)[-1]} to run {self.run_id}'s artifacts "
                f"({exc.strerror or exc}); {self._kept()}"
            ) from None
        except MlflowException:
            if self.server is not None and not server_reachable(self.server):
                self._note_outage()  # it went away during the call: keep the call
                return False
            if flight.outlived:  # it failed while the server was away: sent again now
                return True
            if key.startswith("checkpoint:"):
                self._failed_checkpoints.add(key.split(":", 1)[1])
            if current:
                del self._unsent[key]  # a real error, not an outage: raised, not retried
            raise
        if current:
            if key.startswith("checkpoint:"):
                self._failed_checkpoints.discard(key.split(":", 1)[1])
            del self._unsent[key]
        return True

    def _note_outage(self) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            print(
                f"latentseg: tracking server {self.server} is unreachable; training goes on and "
                "its metrics and artifacts are kept until it answers again",
                file=sys.stderr,
                flush=True,
            )

    def _wait_for_server(self) -> None:
        """At the end of training: wait for the server to take what was kept."""
        from latentseg.errors import TrackingError

        deadline = time.monotonic() + float(os.environ.get("LATENTSEG_TRACKING_WAIT_S", "600"))
        while not self._drain():
            if time.monotonic() > deadline:
                raise TrackingError(
                    f"tracking server {self.server} has been unreachable for "
                    f"{time.monotonic() - (self._outage_since or deadline):.0f} s; "
                    f"{len(self._unsent)} logging calls (metrics, checkpoints, images) were not "
                    f"sent; {self._kept()}"
                )
            time.sleep(2.0)

    # ------------------------------------------------------------------ helpers

    def _kept(self) -> str:
        """Where the checkpoints are, for an error that says what was not uploaded."""
        if self.local_checkpoints is None:
            return "no checkpoint was written yet"
        if not self._unstored():  # the local copy is removed when the run closes
            return "the checkpoints are in the run's artifacts"
        return f"the checkpoints are kept at {self.local_checkpoints}"

    def _log_json(self, payload: dict, name: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_text(json.dumps(payload, indent=2, sort_keys=True))
            self.client.log_artifact(self.run_id, str(path))

    def _log_plots(self, context: TrainContext, pictured: dict[str, Any], epoch: int) -> None:
        info = context.prepared.dataset.info
        args = (pictured, epoch, info.class_names, context.model.config.num_latents)
        self._logged_plot_epochs.add(epoch)
        if not spare_core(context.device):
            # Every core is training: a drawing thread would only stall torch's threads
            # (measured: 4.8 s lost on a 21 s run on 2 cores, against ~1 s drawing in line).
            self._draw_and_log(*args)
            return
        if self._background is None:
            self._background = ThreadPoolExecutor(1, thread_name_prefix="latentseg-plots")
        self._pending.append(self._background.submit(self._draw_and_log, *args))

    def _draw_and_log(
        self, pictured: dict[str, Any], epoch: int, class_names: tuple[str, ...], num_latents: int
    ) -> None:
        for key, array in draw(pictured, class_names, num_latents).items():
            self._send(
                f"image:{key}:{epoch}",
                lambda image=array, name=key: self.client.log_image(
                    self.run_id, image, key=name, step=epoch
                ),
            )


def model_stat_metrics(stats: dict[str, float]) -> dict[str, float]:
    """The model's size and work (a run's ``TrainContext.stats``) as the metrics a run logs
    at step 0, the costs a study of several objectives can minimize."""
    return {
        "model_params": stats["params"],
        "model_flops_per_image": stats["flops_per_image"],
        "model_kv_params": stats["kv_params"],
        "model_kv_activations_per_image": stats["kv_activations"],
    }


def model_summary(context: TrainContext) -> dict[str, Any]:
    model = context.model
    return {
        "variant": context.prepared.variant,
        "params": int(context.stats["params"]),
        "flops_per_image": int(context.stats["flops_per_image"]),
        "kv_params": int(context.stats["kv_params"]),
        "kv_activations_per_image": int(context.stats["kv_activations"]),
        "image_size": list(context.prepared.dataset.info.image_size),
        "params_by_module": {
            name: sum(p.numel() for p in child.parameters())
            for name, child in model.named_children()
        },
        "model_config": model.config.model_dump(mode="json"),
    }
