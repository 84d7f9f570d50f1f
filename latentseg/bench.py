"""``latentseg bench``: speed and memory of the fast path against the tutorial's reference
implementation of the same model, measured side by side in one run, plus the costs around
training (data, tracking, studies, reports).

Every comparison alternates its contenders over several timed windows after a warm-up and
reports medians and their ratio, so a busy machine slows both sides alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentseg.config import OptimConfig
from latentseg.models import create_model, model_config
from latentseg.models.model import count_flops, count_params
from latentseg.train.fastpath import bf16_supported, build_optimizer, prepare_model, to_device
from latentseg.train.loop import target_at

NUM_CLASSES = 4  # the shapes task
IN_CHANNELS = 3


def timed_windows(
    contenders: dict[str, Callable[[int], float]], windows: int, steps: int, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per step of each contender, alternating them window by window.
    ``contenders[name](steps)`` runs ``steps`` steps and returns the seconds they took."""
    for run in contenders.values():
        run(warmup)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(windows):
        for name, run in contenders.items():
            times[name].append(run(steps) / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def repeated(fn: Callable[[], Any]) -> Callable[[int], float]:
    """``fn`` as a contender for :func:`timed_windows`."""

    def run(steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            fn()
        return time.perf_counter() - started

    return run


def matmul_gflops(sizes: tuple[int, ...] = (512, 1024, 2048), seconds: float = 0.6) -> float:
    """The machine's fp32 matmul speed with the current thread count (GFLOP/s): the best
    window over a few square sizes, so that one unlucky size or a busy moment does not set it."""
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            for _ in range(2):
                a @ b
            best = max(best, 2 * 2 * size**3 / (time.perf_counter() - started) / 1e9)
    return best


@dataclass
class Contender:
    """One implementation of a model: how to train a step and how to infer a batch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    fast: bool
    bf16: bool = False

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        return to_device(images, torch.device("cpu")) if self.fast else images

    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(self._inputs(images))
            loss = F.cross_entropy(logits.float(), target_at(masks, logits.shape[-2:]))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.inference_mode()
    def infer(self, images: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            self.model(self._inputs(images))


def reference_contender(variant: str) -> Contender:
    """The tutorial's reference: nn.MultiheadAttention calls, NCHW float32, plain Adam."""
    torch.manual_seed(0)
    model = create_model(
        variant, attention_impl="reference", num_classes=NUM_CLASSES, in_channels=IN_CHANNELS
    )
    return Contender(model, torch.optim.Adam(model.parameters(), lr=1e-3), fast=False)


def contenders(variant: str, bf16: bool) -> dict[str, Contender]:
    """The reference (:func:`reference_contender`) and latentseg's fast path, with identical
    weights, in this process."""
    kwargs = {"num_classes": NUM_CLASSES, "in_channels": IN_CHANNELS}
    reference = reference_contender(variant)
    fast = create_model(variant, attention_impl="fused", **kwargs)
    fast.load_state_dict(reference.model.state_dict())
    fast = prepare_model(fast, torch.device("cpu"))
    optim = OptimConfig(name="adam", lr=1e-3)
    out = {"reference": reference, "fast": Contender(fast, build_optimizer(fast, optim), fast=True)}
    if bf16:
        fast_bf16 = prepare_model(create_model(variant, **kwargs), torch.device("cpu"))
        fast_bf16.load_state_dict(reference.model.state_dict())
        out["fast_bf16"] = Contender(
            fast_bf16, build_optimizer(fast_bf16, optim), fast=True, bf16=True
        )
    return out


def bench_inputs(batch_size: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, IN_CHANNELS, image_size, image_size, generator=gen)
    masks = torch.randint(0, NUM_CLASSES, (batch_size, image_size, image_size), generator=gen)
    return images, masks


class StockReference:
    """The reference in its own process with PyTorch's stock host memory settings (no
    transparent huge pages, glibc's default malloc): the tutorial's code as the tutorial runs
    it. latentseg's process keeps freed memory and uses huge pages (part of its fast path),
    which would also speed up a reference measured beside it; both figures are reported.

    The two processes take turns: the parent blocks while this one runs a window."""

    def __init__(self, variant: str, batch_size: int, image_size: int, threads: int) -> None:
        env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0", "LATENTSEG_MALLOC_TUNING": "0"}
        for key in [k for k in env if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))]:
            del env[key]
        self.env = env
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from latentseg.bench import serve_reference; serve_reference()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self._ask(
            {
                "variant": variant,
                "batch_size": batch_size,
                "image_size": image_size,
                "threads": threads,
            }
        )

    def _ask(self, request: dict[str, Any]) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the stock reference process exited ({self.process.wait()})")
        return json.loads(line)

    def runner(self, op: str) -> Callable[[int], float]:
        return lambda steps: self._ask({"op": op, "steps": steps})

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=60)


def serve_reference() -> None:
    """The stock reference process: set up from the first line of stdin, then time
    ``{"op": "train" | "infer", "steps": N}`` requests, one JSON reply line each."""
    setup = json.loads(sys.stdin.readline())
    torch.set_num_threads(setup["threads"])
    contender = reference_contender(setup["variant"])
    images, masks = bench_inputs(setup["batch_size"], setup["image_size"])
    ops = {
        "train": repeated(lambda: contender.train_step(images, masks)),
        "infer": repeated(lambda: contender.infer(images)),
    }
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        contender.model.train(request["op"] == "train")
        print(json.dumps(ops[request["op"]](request["steps"])), flush=True)


def activation_megabytes(contender: Contender, images: torch.Tensor) -> float:
    """Memory held for the backward pass by one forward (MB): the peak of a training step
    beyond weights, gradients and optimizer state. Counted from autograd's saved tensors,
    each storage once, so it is exact on every device."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=contender.bf16),
    ):
        contender.model(contender._inputs(images))
    return sum(storages.values()) / 1e6


def state_megabytes(model: nn.Module) -> float:
    """Weights + gradients + Adam's two moments (MB)."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6


def bench_variant(
    variant: str,
    batch_size: int,
    image_size: int,
    windows: int,
    steps: int,
    machine_gflops: float,
    bf16: bool,
) -> dict[str, Any]:
    """``reference``: the tutorial's code in a stock PyTorch process (the baseline of the
    ratios); ``reference_same_process``: the same code in latentseg's process; ``fast`` (and
    ``fast_bf16``): latentseg's fast path. All alternate window by window."""
    impls = contenders(variant, bf16)
    images, masks = bench_inputs(batch_size, image_size)
    stock = StockReference(variant, batch_size, image_size, torch.get_num_threads())
    names = {"reference_same_process": "reference"} | {k: k for k in impls if k != "reference"}
    try:
        train = timed_windows(
            {"reference": stock.runner("train")}
            | {
                name: repeated(lambda c=impls[key]: c.train_step(images, masks))
                for name, key in names.items()
            },
            windows,
            steps,
        )
        for c in impls.values():
            c.model.eval()
        infer = timed_windows(
            {"reference": stock.runner("infer")}
            | {name: repeated(lambda c=impls[key]: c.infer(images)) for name, key in names.items()},
            windows,
            steps,
        )
    finally:
        stock.close()
    config = model_config(variant, num_classes=NUM_CLASSES, in_channels=IN_CHANNELS)
    flops = count_flops(config, (image_size, image_size))
    row: dict[str, Any] = {
        "variant": variant,
        "params": count_params(impls["reference"].model),
        "flops_per_image": flops,
        "state_mb": state_megabytes(impls["fast"].model),
    }
    for c in impls.values():
        c.model.train()
    for name in train:
        row[f"{name}_train_images_per_s"] = batch_size / train[name]
        row[f"{name}_infer_images_per_s"] = batch_size / infer[name]
    for name, c in impls.items():
        row[f"{name}_activation_mb"] = activation_megabytes(c, images)
    row["reference_same_process_activation_mb"] = row["reference_activation_mb"]  # same code
    for name in train:
        if name.startswith("fast"):
            row[f"{name}_train_ratio"] = train["reference"] / train[name]
            row[f"{name}_infer_ratio"] = infer["reference"] / infer[name]
            row[f"{name}_train_ratio_same_process"] = train["reference_same_process"] / train[name]
            row[f"{name}_infer_ratio_same_process"] = infer["reference_same_process"] / infer[name]
    # a training step is ~3 forward passes of arithmetic (forward, input and weight gradients)
    for name in train:
        achieved = row[f"{name}_train_images_per_s"] * 3 * flops / 1e9
        row[f"{name}_train_gflops"] = achieved
        row[f"{name}_matmul_share"] = achieved / machine_gflops if machine_gflops else None
    return row


def bench_data(batch_size: int, image_size: int, windows: int, steps: int) -> dict[str, Any]:
    """Reading a batch of ``shapes`` (cached, as training does) and generating one fresh,
    against one fast training step of the default model on that batch."""
    from latentseg.data import SplitSizes, create_dataset

    dataset = create_dataset(
        "shapes",
        split_sizes=SplitSizes(train=batch_size * steps, val=1, test=1),
        image_size=image_size,
    )
    split = dataset.split("train")
    split.get_batch([0])  # fills the cache
    impl = contenders("deep-residual", False)["fast"]
    images, masks = split.get_batch(list(range(batch_size)))
    indices = list(range(batch_size))
    median = timed_windows(
        {
            "train_step": repeated(lambda: impl.train_step(images, masks)),
            "read_cached": repeated(lambda: split.train_batch(indices, seed=1)),
            "generate": repeated(lambda: dataset.generate(range(10_000, 10_000 + batch_size))),
        },
        windows,
        steps,
    )
    return {
        "variant": "deep-residual",
        "train_step_ms": median["train_step"] * 1e3,
        "read_cached_ms": median["read_cached"] * 1e3,
        "generate_ms": median["generate"] * 1e3,
        "read_share_of_step": median["read_cached"] / median["train_step"],
        "generate_share_of_step": median["generate"] / median["train_step"],
    }


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A temporary folder for a benchmark's store, journal and checkpoints: every path is
    given explicitly (the store's state folder is beside it), so the working directory is
    never changed and nothing lands in the user's ``mlruns/``."""
    with tempfile.TemporaryDirectory(prefix="latentseg-bench-") as tmp:
        yield Path(tmp)


def _small_config(epochs: int, tracking: bool) -> dict[str, Any]:
    """A training run like the demo study's trials (``studies/quick.yaml``)."""
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
        "train": {"epochs": epochs, "seed": 1},
        "tracking": {"experiment": "bench", "enabled": tracking, "log_model": False},
    }


def _tracking_config(epochs: int, tracking: bool) -> dict[str, Any]:
    """``experiments/shapes.yaml``'s run (the README's headline result), on half its training
    images and fewer epochs so that the benchmark takes minutes."""
    config = _small_config(epochs, tracking)
    config["data"].update({"params": {"image_size": 64}, "train_size": 2048})
    return config


def bench_tracking(repeats: int = 3, epochs: int = 3) -> dict[str, Any]:
    """The same training run (``_tracking_config``) with full tracking (params, per-epoch
    metrics, attention images at the first, best and last epoch, checkpoints every epoch) and
    with tracking off, alternated; the best time of each and the overhead. Noise on a shared
    machine only adds time, so the best of a few repeats is the steadiest estimate of each.
    Beside that end-to-end difference (seconds apart, noisy): the time the tracked runs
    themselves spent tracking (opening and closing the run, the tracker's hooks)."""
    from latentseg.config import ExperimentConfig
    from latentseg.tracking.run import run_experiment

    with _scratch() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        times: dict[str, list[float]] = {"tracked": [], "untracked": []}
        spent: list[float] = []
        run_experiment(  # warm-up: creates the store's schema, fills caches
            ExperimentConfig.model_validate(_tracking_config(1, True)),
            tracking_uri=uri,
            progress=False,
        )
        for _ in range(repeats):
            for name, tracking in (("untracked", False), ("tracked", True)):
                config = ExperimentConfig.model_validate(_tracking_config(epochs, tracking))
                started = time.perf_counter()
                result = run_experiment(config, tracking_uri=uri, progress=False)
                times[name].append(time.perf_counter() - started)
                if tracking:
                    spent.append(result.tracking_s)
    tracked, untracked = (min(times[k]) for k in ("tracked", "untracked"))
    return {
        "epochs": epochs,
        "repeats_s": times,
        "tracked_s": tracked,
        "untracked_s": untracked,
        "overhead": tracked / untracked - 1,
        "tracking_s": statistics.median(spent),
        "tracking_share": statistics.median(spent) / untracked,
    }


def bench_study(trials: int = 8) -> dict[str, Any]:
    """Per-trial cost of a study beyond training: storage, MLflow parent/trial/seed runs,
    closing them. Trials train one step, so what remains is overhead; the trial's own
    training time (from its seed run) is subtracted."""
    import yaml
    from mlflow.tracking import MlflowClient

    from latentseg.study.runner import run_study

    with _scratch() as tmp:
        base = _small_config(1, True)
        base["model"]["variant"] = "tutorial"
        base["train"]["steps_per_epoch"] = 1
        base["data"].update({"train_size": 16, "val_size": 16, "test_size": 16})
        base["tracking"].update({"log_model": False, "attention_plots": False})
        (tmp / "base.yaml").write_text(yaml.safe_dump(base))
        spec = {
            "experiment": "base.yaml",
            "name": "bench",
            "search_space": {"model.num_latents": list(range(2, 2 + trials))},
            "sampler": {"name": "grid"},
        }
        (tmp / "study.yaml").write_text(yaml.safe_dump(spec))
        uri = f"sqlite:///{tmp}/mlflow.db"
        started = time.perf_counter()
        run_study(str(tmp / "study.yaml"), tracking_uri=uri, progress=False)
        total = time.perf_counter() - started
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("bench")
        runs = client.search_runs([experiment.experiment_id])
        trial_runs = [r for r in runs if r.data.tags.get("latentseg.run_type") == "trial"]
        seed_runs = [r for r in runs if r.data.tags.get("latentseg.run_type") == "seed"]
        trial_s = [(r.info.end_time - r.info.start_time) / 1000 for r in trial_runs]
        training_s = [r.data.metrics.get("epoch_time_s", 0.0) for r in seed_runs]
    overhead = [t - e for t, e in zip(sorted(trial_s), sorted(training_s), strict=False)]
    return {
        "trials": trials,
        "study_wall_s": total,
        "trial_median_s": statistics.median(trial_s),
        "training_median_s": statistics.median(training_s),
        "overhead_median_s": statistics.median(overhead),
        "launch_overhead_s": total - sum(trial_s),
    }


def bench_bf16_accuracy(epochs: int = 4) -> dict[str, Any]:
    """The same short training run in float32 and with bf16 autocast: val mIoU and time of
    each (bf16 is opt-in, ``train.bf16``; this is what it costs in accuracy)."""
    from latentseg.config import ExperimentConfig
    from latentseg.tracking.run import run_experiment

    out: dict[str, Any] = {"epochs": epochs}
    for name, bf16 in (("float32", False), ("bf16", True)):
        config = _small_config(epochs, tracking=False)
        config["train"]["bf16"] = bf16
        started = time.perf_counter()
        result = run_experiment(ExperimentConfig.model_validate(config), progress=False)
        out[f"{name}_val_miou"] = result.summary["best_val_miou"]
        out[f"{name}_s"] = time.perf_counter() - started
    out["miou_difference"] = out["bf16_val_miou"] - out["float32_val_miou"]
    return out


def populate_runs(client, experiment_id: str, runs: int) -> None:
    """Log ``runs`` finished seed-level runs of a latents x heads x expert grid (the shape of
    an ablation's results, ~30 metrics each) in bulk."""
    import itertools
    import random

    from mlflow.entities import Metric, Param

    grid = list(itertools.product([4, 8, 16, 32], [1, 2, 4], [True, False]))
    rng = random.Random(0)
    now = int(time.time() * 1000)
    for index in range(runs):
        latents, heads, experts = grid[index % len(grid)]
        seed = index // len(grid)
        run = client.create_run(experiment_id, tags={"latentseg.run_type": "seed"})
        params = {
            "model.num_latents": latents,
            "model.num_heads": heads,
            "model.expert_attention": experts,
            "train.seed": seed,
            "data.dataset": "shapes",
            "model.num_classes": 4,
        }
        value = 0.6 + 0.01 * latents / 4 + (0.05 if experts else 0) + rng.gauss(0, 0.02)
        history = [Metric("val_miou", value * (e + 1) / 8, now, e + 1) for e in range(8)]
        metrics = {
            "best_val_miou": value,
            "test_miou": value + rng.gauss(0, 0.01),  # what the report compares
            "best_epoch": rng.randint(1, 8),
            "model_params": 70000 + latents * 64,
            "model_flops_per_image": 2.5e8,
            "train_images_per_s": 400 + rng.random(),
        }
        metrics.update({f"test_iou_class{c}": rng.random() for c in range(15)})
        client.log_batch(
            run.info.run_id,
            metrics=[*history, *(Metric(k, float(v), now, 0) for k, v in metrics.items())],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        client.set_terminated(run.info.run_id, "FINISHED")


def bench_report(runs: int) -> dict[str, Any]:
    """``latentseg report``'s work (collect from MLflow, statistics, plots, files) over
    ``runs`` finished runs in a fresh SQLite store."""
    from latentseg.report.collect import collect
    from latentseg.report.render import build, write
    from latentseg.tracking import connect

    with _scratch() as tmp:
        client = connect(f"sqlite:///{tmp}/mlflow.db")
        experiment_id = client.create_experiment("scale")
        started = time.perf_counter()
        populate_runs(client, experiment_id, runs)
        logged = time.perf_counter() - started
        started = time.perf_counter()
        collected = collect(client, experiment="scale")
        collect_s = time.perf_counter() - started
        report = build(collected, "scale", client=client)
        write(report, tmp / "report")
        total = time.perf_counter() - started
    return {"runs": runs, "report_s": total, "collect_s": collect_s, "log_s": logged}


SECTIONS = ("models", "data", "tracking", "study", "report", "bf16")


def run_bench(
    variants: list[str],
    batch_size: int = 32,
    image_size: int = 128,
    threads: int | None = None,
    windows: int = 5,
    steps: int = 5,
    sections: tuple[str, ...] = SECTIONS,
    report_runs: tuple[int, ...] = (1000,),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    gflops = matmul_gflops()
    bf16 = bf16_supported(torch.device("cpu"))
    result: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "matmul_gflops": gflops,
            "bf16": bf16,
        },
        "settings": {
            "batch_size": batch_size,
            "image_size": image_size,
            "windows": windows,
            "steps": steps,
        },
    }
    log(
        f"{torch.get_num_threads()} threads, {result['machine']['cpu_capability']}, "
        f"fp32 matmul {gflops:.0f} GFLOP/s; batch {batch_size}, {image_size}x{image_size}, "
        f"medians of {windows} alternating windows of {steps} steps"
    )
    if "models" in sections:
        result["models"] = []
        for variant in variants:
            row = bench_variant(variant, batch_size, image_size, windows, steps, gflops, bf16)
            result["models"].append(row)
            log(format_model_row(row))
    if "data" in sections:
        result["data"] = bench_data(16, 64, windows, steps)
        d = result["data"]
        log(
            f"data: cached batch {d['read_cached_ms']:.2f} ms = {100 * d['read_share_of_step']:.1f}% of a "
            f"training step ({d['train_step_ms']:.0f} ms); fresh generation {100 * d['generate_share_of_step']:.1f}%"
        )
    if "tracking" in sections:
        result["tracking"] = bench_tracking()
        t = result["tracking"]
        log(
            f"tracking: {t['tracked_s']:.1f} s tracked vs {t['untracked_s']:.1f} s untracked "
            f"({100 * t['overhead']:+.1f}%); time spent tracking {t['tracking_s']:.2f} s "
            f"({100 * t['tracking_share']:.1f}%)"
        )
    if "study" in sections:
        result["study"] = bench_study()
        s = result["study"]
        log(
            f"study: {s['overhead_median_s']:.2f} s overhead per trial (median; trial "
            f"{s['trial_median_s']:.2f} s, its training {s['training_median_s']:.2f} s); launch {s['launch_overhead_s']:.1f} s"
        )
    if "report" in sections:
        result["report"] = []
        for runs in report_runs:
            r = bench_report(runs)
            result["report"].append(r)
            log(f"report: {runs} runs in {r['report_s']:.1f} s (collect {r['collect_s']:.1f} s)")
    if "bf16" in sections and bf16:
        result["bf16_accuracy"] = a = bench_bf16_accuracy()
        log(
            f"bf16 accuracy: val mIoU {a['bf16_val_miou']:.4f} vs float32 {a['float32_val_miou']:.4f} "
            f"({a['miou_difference']:+.4f}) after {a['epochs']} epochs; {a['bf16_s']:.0f} s vs {a['float32_s']:.0f} s"
        )
    return result


def format_model_row(row: dict[str, Any]) -> str:
    parts = [
        f"{row['variant']}: {row['params']:,} params, {row['flops_per_image'] / 1e9:.3f} GFLOP/img; "
        f"train {row['reference_train_images_per_s']:.0f} -> {row['fast_train_images_per_s']:.0f} img/s "
        f"({row['fast_train_ratio']:.2f}x), infer {row['reference_infer_images_per_s']:.0f} -> "
        f"{row['fast_infer_images_per_s']:.0f} img/s ({row['fast_infer_ratio']:.2f}x); "
        f"activations {row['reference_activation_mb']:.0f} -> {row['fast_activation_mb']:.0f} MB; "
        f"{100 * (row['fast_matmul_share'] or 0):.0f}% of matmul peak",
        f"  reference in latentseg's process (its memory settings): train "
        f"{row['reference_same_process_train_images_per_s']:.0f} img/s "
        f"({row['fast_train_ratio_same_process']:.2f}x), infer "
        f"{row['reference_same_process_infer_images_per_s']:.0f} img/s "
        f"({row['fast_infer_ratio_same_process']:.2f}x)",
    ]
    if "fast_bf16_train_ratio" in row:
        parts.append(
            f"  bf16: train {row['fast_bf16_train_ratio']:.2f}x, infer {row['fast_bf16_infer_ratio']:.2f}x"
        )
    return "\n".join(parts)
