"""The training loop. It knows nothing of MLflow: trackers, progress bars and pruners are
callbacks (:mod:`latentseg.train.callbacks`).

Within ``train`` the imports run one way: ``loop`` -> ``callbacks`` (the interface and the
``TrainContext`` callbacks see) -> ``resolve`` (the config, ``Prepared``, ``resolve_device``).
``TrainContext`` and ``resolve_device`` stay importable from here."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentseg.config import OptimConfig
from latentseg.data import Split
from latentseg.data.base import sample_seed
from latentseg.errors import CheckpointError
from latentseg.models import LatentSegModel, count_flops, count_params, create_model, kv_costs
from latentseg.train.callbacks import TrainCallback, TrainContext, TrainState
from latentseg.train.checkpoint import (
    load_training_state,
    read_weights,
    save_training_state,
    save_weights,
)
from latentseg.train.fastpath import bf16_supported, build_optimizer, prepare_model, to_device
from latentseg.train.metrics import ConfusionMatrix, latent_usage, segmentation_metrics
from latentseg.train.resolve import Prepared, resolve_device

MONITOR = "val_miou"  # higher is better; picks the best checkpoint and drives early stopping


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run diverged."""


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after writing a resumable checkpoint."""

    def __init__(self, signal_name: str, checkpoint: Path | None = None) -> None:
        where = f"; resumable checkpoint at {checkpoint}" if checkpoint else ""
        super().__init__(f"stopped by {signal_name}{where}")
        self.signal_name = signal_name
        self.checkpoint = checkpoint


def target_at(masks: Tensor, size: Sequence[int]) -> Tensor:
    """Masks at the logits' resolution: the centre pixel of each stride x stride cell."""
    height, width = masks.shape[-2:]
    if (height, width) == tuple(size):
        return masks
    stride = height // size[0]
    return masks[:, stride // 2 :: stride, stride // 2 :: stride][:, : size[0], : size[1]]


def lr_factor(optim: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Linear warmup to 1, then constant or cosine down to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )

    return factor


def epoch_batches(
    split_size: int, batch_size: int, steps: int, seed: int, epoch: int
) -> Iterator[list[int]]:
    """The epoch's batches of split indices: seeded shuffled passes, cycled as needed.

    Depends only on (seed, epoch), so a resumed run replays exactly the same batches.
    """
    per_pass = max(1, split_size // batch_size)
    produced, pass_index = 0, 0
    while produced < steps:
        gen = torch.Generator().manual_seed(sample_seed(seed, epoch * 100_003 + pass_index))
        order = torch.randperm(split_size, generator=gen)
        for b in range(per_pass):
            if produced == steps:
                return
            yield order[b * batch_size : (b + 1) * batch_size].tolist()
            produced += 1
        pass_index += 1


@torch.no_grad()
def evaluate(
    model: LatentSegModel,
    split: Split,
    batch_size: int,
    prepared: Prepared,
    device: torch.device,
    prefix: str,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, float] | None:
    """Loss, pixel accuracy, mIoU, mean Dice, per-class IoU on a split; latent diagnostics
    when the model has experts. Metrics are computed at the input resolution (stride-4
    logits are upsampled bilinearly) so that ``output`` variants compare fairly; the loss at
    the logits' resolution, as in training. Returns None when asked to stop midway."""
    info = prepared.dataset.info
    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss(
        ignore_index=-100 if info.ignore_index is None else info.ignore_index, reduction="sum"
    )
    matrix = ConfusionMatrix(info.num_classes, info.ignore_index, device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    pixels = 0
    usage = None
    diagnostics = model.latent_attention is not None
    model.router_stats(reset=True)  # count this split's routing only
    for images, masks in split.batches(batch_size):
        if should_stop():
            model.train(was_training)
            return None
        images, masks = to_device(images, device), masks.to(device)
        logits, maps = (
            model(images, return_attention=True) if diagnostics else (model(images), None)
        )
        target = target_at(masks, logits.shape[-2:])
        loss_sum += loss_fn(logits.float(), target).double()
        pixels += int(
            target.numel() if info.ignore_index is None else (target != info.ignore_index).sum()
        )
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(
                logits, size=masks.shape[-2:], mode="bilinear", align_corners=False
            )
        matrix.update(logits.argmax(1), masks)
        if maps is not None:
            counts = torch.bincount(maps.assignment().flatten(), minlength=model.config.num_latents)
            usage = counts if usage is None else usage + counts
    model.train(was_training)
    metrics = {
        f"{prefix}_loss": float(loss_sum) / max(1, pixels),
        **segmentation_metrics(matrix, info.class_names, prefix),
    }
    if usage is not None:
        metrics.update({f"{prefix}_{k}": v for k, v in latent_usage(usage).items()})
    router = model.router_stats(reset=True)
    if router is not None:
        metrics[f"{prefix}_router_entropy"] = router.entropy
        metrics.update(
            {f"{prefix}_router_load_e{i}": float(v) for i, v in enumerate(router.load.tolist())}
        )
    return metrics


def fit(
    prepared: Prepared,
    checkpoint_dir: str | Path,
    callbacks: Sequence[TrainCallback] = (),
    resume_from: str | Path | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, float]:
    """Train ``prepared`` and return the summary (``best_*`` and ``test_*`` metrics).

    Writes ``last.ckpt`` every epoch and ``best.safetensors`` on improvement into
    ``checkpoint_dir``; ``resume_from`` continues from a ``last.ckpt``. When ``should_stop()``
    turns true the loop writes a resumable checkpoint at the next step boundary and raises
    :class:`TrainingInterrupted`.
    """
    config = prepared.config
    tcfg, dcfg = config.train, config.data
    device = resolve_device(tcfg.device)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    use_bf16 = tcfg.bf16 and bf16_supported(device)
    if tcfg.bf16 and not use_bf16:
        import warnings

        warnings.warn(
            f"train.bf16: {device.type} has no bf16 support here; training in float32",
            stacklevel=2,
        )

    torch.manual_seed(tcfg.seed)
    model = prepare_model(create_model(prepared.variant, **prepared.overrides), device)
    train_split, val_split, test_split = (
        prepared.dataset.split(s) for s in ("train", "val", "test")
    )
    steps_per_epoch = tcfg.steps_per_epoch or max(1, len(train_split) // dcfg.batch_size)
    eval_batch = dcfg.eval_batch_size or 4 * dcfg.batch_size
    optimizer = build_optimizer(model, config.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(config.optim, tcfg.epochs * steps_per_epoch)
    )
    info = prepared.dataset.info
    loss_fn = nn.CrossEntropyLoss(
        ignore_index=-100 if info.ignore_index is None else info.ignore_index
    )

    state = TrainState()
    skip_steps, loss_sum, loss_count = 0, torch.zeros((), device=device), 0
    if resume_from is not None:
        saved = load_training_state(resume_from)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        state = TrainState(**saved["state"])
        skip_steps = saved["step_in_epoch"]
        loss_sum += saved["loss_sum"]
        loss_count = saved["loss_count"]

    plot_images, plot_masks = val_split.get_batch(
        list(range(min(tcfg.plot_samples, len(val_split))))
    )
    ctx = TrainContext(
        config,
        prepared,
        model,
        device,
        optimizer,
        scheduler,
        state,
        Path(checkpoint_dir),
        steps_per_epoch,
        (plot_images, plot_masks),
    )
    ctx.stats = {
        "params": float(count_params(model)),
        "flops_per_image": float(count_flops(model.config, info.image_size)),
        **{k: float(v) for k, v in kv_costs(model, info.image_size).items()},
    }
    for cb in callbacks:
        cb.on_train_start(ctx)

    def training_state(step_in_epoch: int) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "state": state.to_dict(),
            "step_in_epoch": step_in_epoch,
            "loss_sum": float(loss_sum),
            "loss_count": loss_count,
            "model_config": model.config.model_dump_json(),
            "variant": prepared.variant,
            "experiment_config": config.model_dump_json(),
        }

    def write_last(step_in_epoch: int) -> None:
        save_training_state(ctx.last_checkpoint, training_state(step_in_epoch))
        for cb in callbacks:
            cb.on_checkpoint(ctx, ctx.last_checkpoint, "last")

    def interrupt(step_in_epoch: int) -> TrainingInterrupted:
        write_last(step_in_epoch)
        return TrainingInterrupted(
            str(getattr(should_stop, "received", None) or "stop request"), ctx.last_checkpoint
        )

    model.train()
    first_epoch = tcfg.epochs + 1 if state.stopped_early else state.epoch + 1
    for epoch in range(first_epoch, tcfg.epochs + 1):
        started = time.perf_counter()
        images_seen = 0
        batches = epoch_batches(
            len(train_split), dcfg.batch_size, steps_per_epoch, tcfg.seed, epoch
        )
        for step, indices in enumerate(islice(batches, skip_steps, None), start=skip_steps):
            images, masks = train_split.train_batch(
                indices, sample_seed(tcfg.seed, (epoch * 100_003 + step) * 7 + 3)
            )
            images, masks = to_device(images, device), masks.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(images)
                loss = loss_fn(logits.float(), target_at(masks, logits.shape[-2:]))
                aux = model.aux_loss()  # MoE load balancing (None without MoE)
                if aux is not None:
                    loss = loss + aux
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.optim.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
            loss_count += 1
            images_seen += images.shape[0]
            state.global_step += 1
            for cb in callbacks:
                cb.on_step_end(ctx, step, loss)
            if should_stop():
                raise interrupt(step + 1)
        skip_steps = 0
        train_time = time.perf_counter() - started
        train_loss = float(loss_sum) / max(1, loss_count)
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch} (train_loss={train_loss}); lower optim.lr or set optim.grad_clip"
            )

        val = evaluate(model, val_split, eval_batch, prepared, device, "val", should_stop)
        if val is None:
            raise interrupt(steps_per_epoch)
        metrics = {
            "train_loss": train_loss,
            "lr": scheduler.get_last_lr()[0],
            "train_images_per_s": images_seen / train_time if train_time > 0 else float("nan"),
            **val,
            "epoch_time_s": time.perf_counter() - started,
        }
        current = metrics[MONITOR]
        improved = current > state.best_metric or (
            state.best_epoch == 0 and not math.isnan(current)
        )
        state.epoch = epoch
        state.history.append({"epoch": float(epoch), **metrics})
        if improved:
            state.best_metric, state.best_epoch, state.epochs_without_improvement = (
                current,
                epoch,
                0,
            )
            state.best_metrics = dict(metrics)
            save_weights(
                ctx.best_checkpoint,
                model,
                {
                    "model_config": model.config.model_dump_json(),
                    "variant": prepared.variant,
                    "experiment_config": config.model_dump_json(),
                    "epoch": epoch,
                    MONITOR: current,
                },
            )
        else:
            state.epochs_without_improvement += 1
        loss_sum, loss_count = torch.zeros((), device=device), 0
        patience = tcfg.early_stopping_patience
        state.stopped_early = bool(patience and state.epochs_without_improvement >= patience)
        write_last(0)  # saved with the early-stop decision, so a resume does not train on
        if improved:
            for cb in callbacks:
                cb.on_checkpoint(ctx, ctx.best_checkpoint, "best")
        for cb in callbacks:
            cb.on_epoch_end(ctx, metrics, improved)
        if state.stopped_early:
            break

    summary = {"best_epoch": float(state.best_epoch), "epochs_trained": float(state.epoch)}
    summary.update({f"best_{k}": v for k, v in state.best_metrics.items() if k.startswith("val_")})
    if state.best_epoch:
        if not ctx.best_checkpoint.exists():
            raise CheckpointError(
                f"best checkpoint of epoch {state.best_epoch} is missing: {ctx.best_checkpoint}"
            )
        model.load_state_dict(read_weights(ctx.best_checkpoint)[0])
    test = evaluate(model, test_split, eval_batch, prepared, device, "test", should_stop)
    if test is None:
        raise TrainingInterrupted(
            str(getattr(should_stop, "received", None) or "stop request"), ctx.last_checkpoint
        )
    summary.update(test)
    for cb in callbacks:
        cb.on_train_end(ctx, summary)
    return summary
