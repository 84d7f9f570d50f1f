"""The model benchmark: speed and memory of latentseg's fast path against the tutorial's
reference implementation of the same model, with identical weights and inputs, measured
side by side in one run on the timing harness (:mod:`latentseg.bench.harness`).

The baseline is the reference in a process of its own with PyTorch's stock memory settings
(:class:`StockReference`); the same reference code in latentseg's process is timed beside it.
Everything runs on one device, the CPU by default (``latentseg bench --device cuda``: both
processes on the GPU, each window waiting for the GPU's queued work before its clock stops).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentseg.bench.harness import Timings, alternate, repeated
from latentseg.bench.machine import CPU, synchronizer
from latentseg.config import OptimConfig
from latentseg.models import create_model, model_config
from latentseg.models.model import count_flops, count_params
from latentseg.train.evaluate import target_at
from latentseg.train.fastpath import build_optimizer, prepare_model, to_device

NUM_CLASSES = 4  # the shapes task
IN_CHANNELS = 3


@dataclass
class Contender:
    """One implementation of a model: how to train a step and how to infer a batch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    fast: bool
    bf16: bool = False
    device: torch.device = CPU  # where the model is; inputs are given on it

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        return to_device(images, self.device) if self.fast else images

    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(self._inputs(images))
            loss = F.cross_entropy(logits.float(), target_at(masks, logits.shape[-2:]))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.inference_mode()
    def infer(self, images: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            self.model(self._inputs(images))


def reference_contender(variant: str, device: torch.device = CPU) -> Contender:
    """The tutorial's reference: nn.MultiheadAttention calls, NCHW float32, plain Adam."""
    torch.manual_seed(0)
    model = create_model(
        variant, attention_impl="reference", num_classes=NUM_CLASSES, in_channels=IN_CHANNELS
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Contender(model, optimizer, fast=False, device=device)


def contenders(variant: str, bf16: bool, device: torch.device = CPU) -> dict[str, Contender]:
    """The reference (:func:`reference_contender`) and latentseg's fast path, with identical
    weights, in this process, on ``device``."""
    kwargs = {"num_classes": NUM_CLASSES, "in_channels": IN_CHANNELS}
    reference = reference_contender(variant, device)
    fast = create_model(variant, attention_impl="fused", **kwargs)
    fast.load_state_dict(reference.model.state_dict())
    fast = prepare_model(fast, device)
    optim = OptimConfig(name="adam", lr=1e-3)
    out = {
        "reference": reference,
        "fast": Contender(fast, build_optimizer(fast, optim), fast=True, device=device),
    }
    if bf16:
        fast_bf16 = prepare_model(create_model(variant, **kwargs), device)
        fast_bf16.load_state_dict(reference.model.state_dict())
        out["fast_bf16"] = Contender(
            fast_bf16, build_optimizer(fast_bf16, optim), fast=True, bf16=True, device=device
        )
    return out


def bench_inputs(
    batch_size: int, image_size: int, device: torch.device = CPU
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of images and masks, the same on every device (drawn on the CPU)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, IN_CHANNELS, image_size, image_size, generator=gen)
    masks = torch.randint(0, NUM_CLASSES, (batch_size, image_size, image_size), generator=gen)
    return images.to(device), masks.to(device)


class StockReference:
    """The reference in its own process with PyTorch's stock host memory settings (no
    transparent huge pages, glibc's default malloc): the tutorial's code as the tutorial runs
    it. latentseg's process keeps freed memory and uses huge pages (part of its fast path),
    which would also speed up a reference measured beside it; both figures are reported.

    The two processes take turns: the parent blocks while this one runs a window."""

    def __init__(
        self,
        variant: str,
        batch_size: int,
        image_size: int,
        threads: int,
        device: torch.device = CPU,
    ) -> None:
        env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0", "LATENTSEG_MALLOC_TUNING": "0"}
        for key in [k for k in env if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))]:
            del env[key]
        self.env = env
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from latentseg.bench.model_speed import serve_reference; serve_reference()",
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
                "device": str(device),
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
    device = torch.device(setup["device"])
    contender = reference_contender(setup["variant"], device)
    images, masks = bench_inputs(setup["batch_size"], setup["image_size"], device)
    synchronize = synchronizer(device)
    ops = {
        "train": repeated(lambda: contender.train_step(images, masks), synchronize),
        "infer": repeated(lambda: contender.infer(images), synchronize),
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
        torch.autocast(contender.device.type, dtype=torch.bfloat16, enabled=contender.bf16),
    ):
        contender.model(contender._inputs(images))
    return sum(storages.values()) / 1e6


def state_megabytes(model: nn.Module) -> float:
    """Weights + gradients + Adam's two moments (MB)."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6


def time_side_by_side(
    variant: str,
    impls: dict[str, Contender],
    images: torch.Tensor,
    masks: torch.Tensor,
    windows: int,
    steps: int,
) -> tuple[Timings, Timings]:
    """Training and inference timings, alternated window by window, of ``reference`` (the
    tutorial's code in a stock PyTorch process, :class:`StockReference`),
    ``reference_same_process`` (the same code in this process) and the fast path's contenders
    (``fast``, ``fast_bf16``), all on the device of ``images``. The models are left in
    training mode."""
    batch_size, image_size, device = images.shape[0], images.shape[-1], images.device
    stock = StockReference(variant, batch_size, image_size, torch.get_num_threads(), device)
    names = {"reference_same_process": "reference"} | {k: k for k in impls if k != "reference"}
    synchronize = synchronizer(device)
    try:
        train = alternate(
            {"reference": stock.runner("train")}
            | {
                name: repeated(lambda c=impls[key]: c.train_step(images, masks), synchronize)
                for name, key in names.items()
            },
            windows,
            steps,
        )
        for contender in impls.values():
            contender.model.eval()
        infer = alternate(
            {"reference": stock.runner("infer")}
            | {
                name: repeated(lambda c=impls[key]: c.infer(images), synchronize)
                for name, key in names.items()
            },
            windows,
            steps,
        )
    finally:
        stock.close()
        for contender in impls.values():
            contender.model.train()
    return train, infer


def images_per_second(train: Timings, infer: Timings, batch_size: int) -> dict[str, float]:
    """Training and inference images per second of every contender (medians)."""
    speed: dict[str, float] = {}
    for name, seconds in train.medians.items():
        speed[f"{name}_train_images_per_s"] = batch_size / seconds
        speed[f"{name}_infer_images_per_s"] = batch_size / infer.medians[name]
    return speed


def speedups(train: Timings, infer: Timings) -> dict[str, float]:
    """How many times faster each fast-path contender is than the stock reference
    (``*_ratio``, the bench's headline) and than the same code in this process
    (``*_ratio_same_process``)."""
    ratios: dict[str, float] = {}
    for name in (n for n in train.windows if n.startswith("fast")):
        ratios[f"{name}_train_ratio"] = train.ratio("reference", name)
        ratios[f"{name}_infer_ratio"] = infer.ratio("reference", name)
        ratios[f"{name}_train_ratio_same_process"] = train.ratio("reference_same_process", name)
        ratios[f"{name}_infer_ratio_same_process"] = infer.ratio("reference_same_process", name)
    return ratios


def arithmetic(
    speed: dict[str, float], flops: int, machine_gflops: float
) -> dict[str, float | None]:
    """GFLOP/s each contender's training achieves, counted in the reference's arithmetic,
    and its share of the machine's fp32 matmul speed (None where that is unknown)."""
    figures: dict[str, float | None] = {}
    for key, images_per_s in speed.items():
        if key.endswith("_train_images_per_s"):
            name = key.removesuffix("_train_images_per_s")
            # a training step is ~3 forward passes of arithmetic (forward, input and weight
            # gradients)
            achieved = images_per_s * 3 * flops / 1e9
            figures[f"{name}_train_gflops"] = achieved
            figures[f"{name}_matmul_share"] = achieved / machine_gflops if machine_gflops else None
    return figures


def bench_variant(
    variant: str,
    batch_size: int,
    image_size: int,
    windows: int,
    steps: int,
    machine_gflops: float,
    bf16: bool,
    device: torch.device = CPU,
) -> dict[str, Any]:
    """One row of the bench's ``models``: the variant's size and FLOPs, then the speed,
    activation memory and speed-ups of :func:`time_side_by_side`'s contenders on
    ``device``."""
    impls = contenders(variant, bf16, device)
    images, masks = bench_inputs(batch_size, image_size, device)
    train, infer = time_side_by_side(variant, impls, images, masks, windows, steps)
    config = model_config(variant, num_classes=NUM_CLASSES, in_channels=IN_CHANNELS)
    flops = count_flops(config, (image_size, image_size))
    speed = images_per_second(train, infer, batch_size)
    memory = {f"{name}_activation_mb": activation_megabytes(c, images) for name, c in impls.items()}
    memory["reference_same_process_activation_mb"] = memory["reference_activation_mb"]  # same code
    return {
        "variant": variant,
        "params": count_params(impls["reference"].model),
        "flops_per_image": flops,
        "state_mb": state_megabytes(impls["fast"].model),
        **speed,
        **memory,
        **speedups(train, infer),
        **arithmetic(speed, flops, machine_gflops),
    }


def format_model_row(row: dict[str, Any]) -> str:
    """The bench's console lines for one :func:`bench_variant` row."""
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
