"""What the study tests share: the Optuna journal of a test's tracking store, the runs of a
study by type, and :class:`Scripted`, a judge that the adaptive tests hand a study.

A subprocess that runs a study imports :class:`Scripted` from here (a test module is never
imported by another module, tests or not)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import optuna

from latentseg.study.judgement import Judgement, Need
from latentseg.study.storage import default_journal


def journal_file(path: str | Path) -> optuna.storages.JournalStorage:
    """The Optuna journal storage in the file ``path`` (its folder made where missing)."""
    from optuna.storages.journal import JournalFileBackend

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def journal(tmp_path: Path) -> optuna.storages.JournalStorage:
    """The default journal of the tests' tracking store (``tracking_uri``:
    ``tmp_path/store/mlflow.db``), where a study run on that store keeps its trials."""
    return journal_file(default_journal(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"))


def runs_by_type(client, experiment_name) -> dict[str, list]:
    """The MLflow runs of an experiment by ``latentseg.run_type``: study, trial and seed."""
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id], max_results=10_000)
    out: dict[str, list] = {"study": [], "trial": [], "seed": []}
    for run in runs:
        out[run.data.tags["latentseg.run_type"]].append(run)
    return out


def no_run_left_running(client, experiment_name) -> bool:
    experiment = client.get_experiment_by_name(experiment_name)
    return not client.search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"
    )


class Scripted:
    """A judge that keeps ``num_latents = 8`` (and so the baseline, 4) open for
    ``open_rounds`` rounds; ``interrupt_after`` sends this process SIGINT after that
    round's look, as Ctrl-C would."""

    def __init__(self, storage, open_rounds: int = 99, interrupt_after: int | None = None):
        self.storage, self.open_rounds, self.interrupt_after = storage, open_rounds, interrupt_after
        self.calls: list[int] = []

    def __call__(self, loaded, tracking_uri: str, round_: int) -> Judgement:
        self.calls.append(round_)
        study = optuna.load_study(study_name=loaded.name, storage=self.storage)
        number = {
            latents: [
                t.number for t in study.trials if t.params.get("model.num_latents") == latents
            ]
            for latents in (4, 8, 16)
        }
        needs = []
        if round_ <= self.open_rounds:
            needs = [Need(number[8], "num_latents 8 vs baseline"), Need(number[4], "baseline of 1")]
        if round_ == self.interrupt_after:
            os.kill(os.getpid(), signal.SIGINT)
        table = [{"comparison": "num_latents 8", "verdict": "inconclusive"}]
        return Judgement(needs, open=1 if needs else 0, decided=1, table=table)


def modules_at_start(out: str, modules: list[str]) -> None:
    """Write to ``out`` which of ``modules`` this process has imported as it starts, and its
    parent's pid, then use 0.3 s of CPU: the target of a worker process in
    tests/study/test_pool.py."""
    import json
    import sys
    import time

    preloaded = {name: name in sys.modules for name in modules}
    Path(out).write_text(json.dumps({"preloaded": preloaded, "parent": os.getppid()}))
    busy = time.process_time() + 0.3  # CPU time its launch counts once the server is reaped
    while time.process_time() < busy:
        pass
