"""The costs around training, measured on the library's own pipelines: reading and
generating data against a training step, tracking a run, a study's per-trial overhead, a
report over many runs, and what bf16 costs in accuracy.

Every benchmark that writes a store, a journal or checkpoints does so in a temporary folder
with every path given explicitly, so the working directory is never changed and nothing
lands in the user's ``mlruns/``. Each trains on the bench's ``device`` (``cpu``, the
default, or ``cuda``), never on whatever ``train.device: auto`` would find. The library's
pipelines are imported where they run, so importing the bench (as the stock reference
process does) stays light.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latentseg.bench.harness import alternate, repeated, stopwatch
from latentseg.bench.machine import synchronizer
from latentseg.bench.model_speed import contenders


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A temporary folder for a benchmark's store, journal and checkpoints."""
    with tempfile.TemporaryDirectory(prefix="latentseg-bench-") as tmp:
        yield Path(tmp)


def small_run_config(epochs: int, tracking: bool, device: str = "cpu") -> dict[str, Any]:
    """A training run like the demo study's trials (``studies/quick.yaml``), on ``device``."""
    return {
        "model": {"variant": "deep-residual"},
        "data": {
            "dataset": "shapes",
            "params": {"image_size": 48},
            "batch_size": 16,
            "train_size": 1024,
            "val_size": 256,
            "test_size": 256,
        },
        "optim": {"name": "adamw", "lr": 2e-3, "schedule": "cosine", "warmup_steps": 50},
        "train": {"epochs": epochs, "seed": 1, "device": device},
        "tracking": {"experiment": "bench", "enabled": tracking, "log_model": False},
    }


def tracking_run_config(epochs: int, tracking: bool, device: str = "cpu") -> dict[str, Any]:
    """``experiments/shapes.yaml``'s run (the README's headline result), on half its training
    images and fewer epochs so that the benchmark takes minutes."""
    config = small_run_config(epochs, tracking, device)
    config["data"].update({"params": {"image_size": 64}, "train_size": 2048})
    return config


# --------------------------------------------------------------------------- data


def bench_data(
    batch_size: int,
    image_size: int,
    windows: int,
    steps: int,
    variant: str = "deep-residual",
    device: str = "cpu",
) -> dict[str, Any]:
    """Reading a batch of ``shapes`` (cached, as training does) and generating one fresh,
    against one fast training step of ``variant`` on that batch on ``device``, alternated."""
    from latentseg.data import SplitSizes, create_dataset

    dataset = create_dataset(
        "shapes",
        split_sizes=SplitSizes(train=batch_size * steps, val=1, test=1),
        image_size=image_size,
    )
    split = dataset.split("train")
    split.get_batch([0])  # fills the cache
    impl = contenders(variant, False, torch.device(device))["fast"]
    images, masks = (t.to(device) for t in split.get_batch(list(range(batch_size))))
    indices = list(range(batch_size))
    synchronize = synchronizer(torch.device(device))
    median = alternate(
        {
            "train_step": repeated(lambda: impl.train_step(images, masks), synchronize),
            "read_cached": repeated(lambda: split.train_batch(indices, seed=1)),
            "generate": repeated(lambda: dataset.generate(range(10_000, 10_000 + batch_size))),
        },
        windows,
        steps,
    ).medians
    return {
        "variant": variant,
        "train_step_ms": median["train_step"] * 1e3,
        "read_cached_ms": median["read_cached"] * 1e3,
        "generate_ms": median["generate"] * 1e3,
        "read_share_of_step": median["read_cached"] / median["train_step"],
        "generate_share_of_step": median["generate"] / median["train_step"],
    }


def format_data(figures: dict[str, Any]) -> str:
    return (
        f"data: cached batch {figures['read_cached_ms']:.2f} ms = "
        f"{100 * figures['read_share_of_step']:.1f}% of a training step "
        f"({figures['train_step_ms']:.0f} ms); fresh generation "
        f"{100 * figures['generate_share_of_step']:.1f}%"
    )


# --------------------------------------------------------------------------- tracking


def bench_tracking(repeats: int = 3, epochs: int = 3, device: str = "cpu") -> dict[str, Any]:
    """The same training run (:func:`tracking_run_config`) with full tracking (params,
    per-epoch metrics, attention images at the first, best and last epoch, checkpoints every
    epoch) and with tracking off, alternated; the best time of each and the overhead. Beside
    that end-to-end difference (seconds apart, noisy): the time the tracked runs themselves
    spent tracking (opening and closing the run, the tracker's hooks)."""
    from latentseg.config import ExperimentConfig
    from latentseg.tracking.run import run_experiment

    spent: list[float] = []
    with scratch() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"

        def train(tracking: bool, epochs: int = epochs) -> None:
            config = ExperimentConfig.model_validate(tracking_run_config(epochs, tracking, device))
            result = run_experiment(config, tracking_uri=uri, progress=False)
            if tracking:
                spent.append(result.tracking_s)

        train(True, epochs=1)  # warm-up: creates the store's schema, fills caches
        spent.clear()
        runs = alternate(
            {
                "untracked": repeated(lambda: train(False)),
                "tracked": repeated(lambda: train(True)),
            },
            windows=repeats,
            steps=1,
            warmup=0,
        )
    tracked, untracked = runs.best["tracked"], runs.best["untracked"]
    return {
        "epochs": epochs,
        "repeats_s": {"tracked": runs.windows["tracked"], "untracked": runs.windows["untracked"]},
        "tracked_s": tracked,
        "untracked_s": untracked,
        "overhead": tracked / untracked - 1,
        "tracking_s": statistics.median(spent),
        "tracking_share": statistics.median(spent) / untracked,
    }


def format_tracking(figures: dict[str, Any]) -> str:
    return (
        f"tracking: {figures['tracked_s']:.1f} s tracked vs {figures['untracked_s']:.1f} s "
        f"untracked ({100 * figures['overhead']:+.1f}%); time spent tracking "
        f"{figures['tracking_s']:.2f} s ({100 * figures['tracking_share']:.1f}%)"
    )


# --------------------------------------------------------------------------- study


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


@contextlib.contextmanager
def scratch_database(server: str, prefix: str = "latentseg_bench_") -> Iterator[str]:
    """The URL of a fresh database (named ``prefix`` and a random suffix) on the PostgreSQL
    server that ``server`` reaches (a URL of a database there the bench may connect to, e.g.
    ``postgresql://postgres@127.0.0.1:5432/postgres``), dropped afterwards."""
    import uuid

    import sqlalchemy

    from latentseg.errors import ConfigError
    from latentseg.tracking.store import redact

    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    try:
        engine = sqlalchemy.create_engine(
            server,
            isolation_level="AUTOCOMMIT",
            poolclass=sqlalchemy.pool.NullPool,
            connect_args={"connect_timeout": 5},
        )
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # bad URL, no server, no right to create databases: say which
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"--postgres {redact(server)}: cannot create a scratch database there: {reason}"
        ) from None
    try:
        yield engine.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


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


# --------------------------------------------------------------------------- report

REPORT_SIZES = (1000, 10_000)  # runs in the store


def bench_report(runs: int, windows: int = 3) -> dict[str, Any]:
    """``latentseg report``'s work (collect from MLflow, statistics, plots, files) over
    ``runs`` finished runs (:mod:`latentseg.tracking.synthetic_runs`) in a fresh SQLite
    store, alternated with ``mlflow.search_runs`` alone on the same store for ``windows``
    windows: the medians of each, and ``write_s``, what writing the runs took."""
    from latentseg.report.collect import collect
    from latentseg.report.render import build
    from latentseg.report.writers import write
    from latentseg.tracking.store import TrackingStore
    from latentseg.tracking.synthetic_runs import write_ablation_runs

    collecting: list[float] = []
    with scratch() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        store = TrackingStore.open(uri)
        experiment_id = store.experiment("scale")
        with stopwatch() as writing:
            write_ablation_runs(uri, experiment_id, runs)

        def report() -> None:
            with stopwatch() as collected_in:
                collected = collect(store, experiment="scale")
            collecting.append(collected_in.wall_s)
            write(build(collected, "scale", store=store), tmp / "report")

        timings = alternate(
            {
                "search_runs": repeated(lambda: store.mlflow_frame([experiment_id])),
                "report": repeated(report),
            },
            windows,
            steps=1,
            warmup=0,
        )
    medians = timings.medians
    return {
        "runs": runs,
        "report_s": medians["report"],
        "search_runs_s": medians["search_runs"],
        "report_to_search_runs": timings.ratio("report", "search_runs"),
        "collect_s": statistics.median(collecting),
        "windows": timings.windows,
        "write_s": writing.wall_s,
    }


def format_report(figures: dict[str, Any]) -> str:
    return (
        f"report: {figures['runs']} runs in {figures['report_s']:.1f} s (collect "
        f"{figures['collect_s']:.1f} s); mlflow.search_runs alone {figures['search_runs_s']:.1f} s "
        f"({figures['report_to_search_runs']:.2f}x)"
    )


# --------------------------------------------------------------------------- bf16


def bench_bf16_accuracy(epochs: int = 4, device: str = "cpu") -> dict[str, Any]:
    """The same short training run on ``device`` in float32 and with bf16 autocast: val mIoU
    and time of each (bf16 is opt-in, ``train.bf16``; this is what it costs in accuracy)."""
    from latentseg.config import ExperimentConfig
    from latentseg.tracking.run import run_experiment

    out: dict[str, Any] = {"epochs": epochs}
    for name, bf16 in (("float32", False), ("bf16", True)):
        config = small_run_config(epochs, tracking=False, device=device)
        config["train"]["bf16"] = bf16
        with stopwatch() as elapsed:
            result = run_experiment(ExperimentConfig.model_validate(config), progress=False)
        out[f"{name}_val_miou"] = result.summary["best_val_miou"]
        out[f"{name}_s"] = elapsed.wall_s
    out["miou_difference"] = out["bf16_val_miou"] - out["float32_val_miou"]
    return out


def format_bf16_accuracy(figures: dict[str, Any]) -> str:
    return (
        f"bf16 accuracy: val mIoU {figures['bf16_val_miou']:.4f} vs float32 "
        f"{figures['float32_val_miou']:.4f} ({figures['miou_difference']:+.4f}) after "
        f"{figures['epochs']} epochs; {figures['bf16_s']:.0f} s vs {figures['float32_s']:.0f} s"
    )
