"""The study section: what a study's trial costs beyond its training, on the journal and on
PostgreSQL, and what its launch costs."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentseg.bench.harness import stopwatch
from latentseg.bench.overheads.runs import scratch, small_run_config
from latentseg.postgres import scratch_database

STUDY_SIZES = (10, 1000)  # queued trials: a small study and a large one


def write_study(folder: Path, trials: int, device: str = "cpu") -> Path:
    """A grid study of ``trials`` trials that train one step each on ``device`` (so that what
    a trial costs beyond that is overhead), written with its base experiment into ``folder``.
    The trials differ only in the learning rate, so each costs the same whatever its
    number."""
    import yaml

    base = small_run_config(1, True, device)
    base["model"]["variant"] = "tutorial"
    base["train"]["steps_per_epoch"] = 1
    base["data"].update({"train_size": 16, "val_size": 16, "test_size": 16})
    base["tracking"].update({"log_model": False, "attention_plots": False})
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {
        "experiment": "base.yaml",
        "name": "bench",
        "search_space": {"optim.lr": [round(1e-3 + i * 1e-7, 8) for i in range(trials)]},
        "sampler": {"name": "grid"},
    }
    (folder / "study.yaml").write_text(yaml.safe_dump(spec))
    return folder / "study.yaml"


@dataclass(frozen=True)
class Timeline:
    """When each trial of a study ran, from its MLflow runs, in the order the trials started:
    start and end of each trial run (seconds since the epoch) and its seed run's training
    time (``epoch_time_s``)."""

    starts: list[float]
    ends: list[float]
    training: list[float]

    def overheads(self) -> list[float]:
        """What each trial but the last cost beyond its training: from its start to the next
        trial's start (the storage's pop and tell, the MLflow runs, closing them), less the
        training."""
        cycles = [b - a for a, b in itertools.pairwise(self.starts)]
        return [c - t for c, t in zip(cycles, self.training[:-1], strict=True)]


def study_timeline(uri: str, experiment: str) -> Timeline:
    """The :class:`Timeline` of the one study in ``experiment`` of the store at ``uri``."""
    from latentseg.tracking.store import RUN_TYPE, TRIAL_TAG, TrackingStore

    store = TrackingStore.open(uri)
    runs = store.search([store.existing_experiment(experiment)])
    trials = sorted(
        (r for r in runs if r.data.tags.get(RUN_TYPE) == "trial"), key=lambda r: r.info.start_time
    )
    training = {
        r.data.tags.get(TRIAL_TAG): r.data.metrics.get("epoch_time_s", 0.0)
        for r in runs
        if r.data.tags.get(RUN_TYPE) == "seed"
    }
    return Timeline(
        [r.info.start_time / 1000 for r in trials],
        [r.info.end_time / 1000 for r in trials],
        [training.get(r.data.tags.get(TRIAL_TAG), 0.0) for r in trials],
    )


def study_overhead(trials: int, storage: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """One study of ``trials`` queued trials (:func:`write_study`) on ``storage`` (None: the
    journal beside the store, as a study without ``--storage`` has), one worker: what each
    trial costs beyond its training (median over the trials, and over the first and the last
    tenth of them, to show whether it grows as the storage fills) and what the launch costs
    (opening, the worker's start, the summary and its plots)."""
    from latentseg.study.runner import run_study

    with scratch() as tmp:
        spec = write_study(tmp, trials, device)
        uri = f"sqlite:///{tmp}/mlflow.db"
        with stopwatch() as study:
            run_study(str(spec), tracking_uri=uri, storage=storage, progress=False)
        timeline = study_timeline(uri, "bench")
    overheads = timeline.overheads()
    tenth = max(1, len(overheads) // 10)
    return {
        "storage": "journal" if storage is None else storage.split(":", 1)[0],
        "trials": trials,
        "study_wall_s": study.wall_s,
        "overhead_median_s": statistics.median(overheads),
        "overhead_first_tenth_s": statistics.median(overheads[:tenth]),
        "overhead_last_tenth_s": statistics.median(overheads[-tenth:]),
        "training_median_s": statistics.median(timeline.training),
        "launch_s": study.wall_s - (timeline.ends[-1] - timeline.starts[0]),
    }


def bench_study(
    sizes: tuple[int, ...] = STUDY_SIZES,
    postgres: str | None = None,
    device: str = "cpu",
    log: Callable[[dict[str, Any]], None] = lambda row: None,
) -> list[dict[str, Any]]:
    """:func:`study_overhead` for each count of queued trials in ``sizes``, on the journal
    and, given a ``postgres`` server (:func:`scratch_database`), on PostgreSQL (an RDB
    storage with a heartbeat, as studies across machines use). Each study has a fresh
    storage and a fresh tracking store; ``log`` gets each row as it is measured."""
    rows = []
    for trials in sizes:
        rows.append(study_overhead(trials, None, device))
        log(rows[-1])
    if postgres:
        for trials in sizes:
            with scratch_database(postgres) as url:
                rows.append(study_overhead(trials, url, device))
            log(rows[-1])
    return rows


def format_study(row: dict[str, Any]) -> str:
    spread = (
        f" (first tenth {row['overhead_first_tenth_s']:.3f} s, last tenth "
        f"{row['overhead_last_tenth_s']:.3f} s)"
        if row["trials"] >= 100
        else ""
    )
    return (
        f"study on {row['storage']}, {row['trials']} queued trials: "
        f"{row['overhead_median_s']:.3f} s overhead per trial{spread}; a trial's training "
        f"{row['training_median_s']:.3f} s; launch {row['launch_s']:.1f} s"
    )
