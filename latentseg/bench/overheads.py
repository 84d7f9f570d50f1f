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
import statistics
import tempfile
from collections.abc import Iterator
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


def write_study(folder: Path, trials: int, device: str = "cpu") -> Path:
    """A grid study of ``trials`` trials that train one step each on ``device`` (so that what
    a trial costs beyond that is overhead), written with its base experiment into ``folder``."""
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
        "search_space": {"model.num_latents": list(range(2, 2 + trials))},
        "sampler": {"name": "grid"},
    }
    (folder / "study.yaml").write_text(yaml.safe_dump(spec))
    return folder / "study.yaml"


def trial_durations(uri: str, experiment: str) -> tuple[list[float], list[float]]:
    """Seconds from start to end of each trial run of ``experiment``, and the training time
    of each seed run (its ``epoch_time_s``)."""
    from latentseg.tracking.store import TrackingStore

    store = TrackingStore.open(uri)
    runs = store.search([store.existing_experiment(experiment)])
    of_type = {
        kind: [r for r in runs if r.data.tags.get("latentseg.run_type") == kind]
        for kind in ("trial", "seed")
    }
    trial_s = [(r.info.end_time - r.info.start_time) / 1000 for r in of_type["trial"]]
    training_s = [r.data.metrics.get("epoch_time_s", 0.0) for r in of_type["seed"]]
    return trial_s, training_s


def bench_study(trials: int = 8, device: str = "cpu") -> dict[str, Any]:
    """Per-trial cost of a study beyond training: storage, MLflow parent/trial/seed runs,
    closing them. Trials train one step, so what remains is overhead; the trial's own
    training time (from its seed run) is subtracted."""
    from latentseg.study.runner import run_study

    with scratch() as tmp:
        spec = write_study(tmp, trials, device)
        uri = f"sqlite:///{tmp}/mlflow.db"
        with stopwatch() as study:
            run_study(str(spec), tracking_uri=uri, progress=False)
        trial_s, training_s = trial_durations(uri, "bench")
    overhead = [t - e for t, e in zip(sorted(trial_s), sorted(training_s), strict=False)]
    return {
        "trials": trials,
        "study_wall_s": study.wall_s,
        "trial_median_s": statistics.median(trial_s),
        "training_median_s": statistics.median(training_s),
        "overhead_median_s": statistics.median(overhead),
        "launch_overhead_s": study.wall_s - sum(trial_s),
    }


def format_study(figures: dict[str, Any]) -> str:
    return (
        f"study: {figures['overhead_median_s']:.2f} s overhead per trial (median; trial "
        f"{figures['trial_median_s']:.2f} s, its training {figures['training_median_s']:.2f} s); "
        f"launch {figures['launch_overhead_s']:.1f} s"
    )


# --------------------------------------------------------------------------- report


def bench_report(runs: int) -> dict[str, Any]:
    """``latentseg report``'s work (collect from MLflow, statistics, plots, files) over
    ``runs`` finished runs (:mod:`latentseg.tracking.synthetic_runs`) in a fresh SQLite
    store; ``log_s`` is the time writing them took."""
    from latentseg.report.collect import collect
    from latentseg.report.render import build, write
    from latentseg.tracking.store import TrackingStore
    from latentseg.tracking.synthetic_runs import log_ablation_runs

    with scratch() as tmp:
        store = TrackingStore.open(f"sqlite:///{tmp}/mlflow.db")
        experiment_id = store.experiment("scale")
        with stopwatch() as writing:
            log_ablation_runs(store.client, experiment_id, runs)
        with stopwatch() as reporting:
            with stopwatch() as collecting:
                collected = collect(store, experiment="scale")
            write(build(collected, "scale", store=store), tmp / "report")
    return {
        "runs": runs,
        "report_s": reporting.wall_s,
        "collect_s": collecting.wall_s,
        "log_s": writing.wall_s,
    }


def format_report(figures: dict[str, Any]) -> str:
    return (
        f"report: {figures['runs']} runs in {figures['report_s']:.1f} s "
        f"(collect {figures['collect_s']:.1f} s)"
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
