"""What the study tests share: the Optuna journal of a test's tracking store and the runs of
a study by type."""

from __future__ import annotations

from pathlib import Path

import optuna

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
