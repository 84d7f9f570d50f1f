"""The training loop: :class:`Trainer`, whose steps (restore, train an epoch, validate, end
the epoch, test) are Lightning's, and :func:`fit`, which runs them. It knows nothing of
MLflow: trackers, progress bars and pruners are callbacks (:mod:`latentseg.train.callbacks`).

Within ``train`` the imports run one way: ``loop`` -> ``evaluate`` (a split's metrics) and
``callbacks`` (the interface and the ``TrainContext`` callbacks see) -> ``resolve`` (the
config, ``Prepared``, ``resolve_device``).
``TrainContext`` and ``resolve_device`` stay importable from here."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentseg.config import OptimConfig, TrainConfig
from latentseg.data import Split
from latentseg.data.base import sample_seed
from latentseg.errors import CheckpointError
from latentseg.models import count_flops, count_params, create_model, kv_costs
from latentseg.train.callbacks import TrainCallback, TrainContext, TrainState
from latentseg.train.checkpoint import (
    load_training_state,
    read_weights,
    save_training_state,
    save_weights,
)
from latentseg.train.evaluate import evaluate, save_per_image, target_at
from latentseg.train.fastpath import bf16_supported, build_optimizer, prepare_model, to_device
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


def weights_seed(train: TrainConfig) -> int:
    """The seed of the initial weights: ``train.init_seed``, else ``train.seed``."""
    return train.seed if train.init_seed is None else train.init_seed


def order_seed(train: TrainConfig) -> int:
    """The seed of the data order and augmentation: ``train.order_seed``, else ``train.seed``."""
    return train.seed if train.order_seed is None else train.order_seed


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
        generator = torch.Generator().manual_seed(sample_seed(seed, epoch * 100_003 + pass_index))
        order = torch.randperm(split_size, generator=generator)
        for batch in range(per_pass):
            if produced == steps:
                return
            yield order[batch * batch_size : (batch + 1) * batch_size].tolist()
            produced += 1
        pass_index += 1


class Trainer:
    """Trains one prepared experiment in Lightning's steps, without Lightning: :meth:`restore`
    a ``last.ckpt``, :meth:`start`, then per epoch :meth:`train_epoch`, :meth:`validate` and
    :meth:`end_epoch` (history, best weights, early stopping, ``last.ckpt``), and finally
    :meth:`test` the best weights. :meth:`fit` runs them in that order.

    Callbacks observe every step (:class:`TrainCallback`); the trainer knows nothing of what
    they do with it (MLflow, Optuna, a progress bar). ``should_stop`` is polled after every
    optimizer step and between evaluation batches: when it turns true the trainer writes a
    resumable ``last.ckpt`` and raises :class:`TrainingInterrupted`.
    """

    def __init__(
        self,
        prepared: Prepared,
        checkpoint_dir: str | Path,
        callbacks: Sequence[TrainCallback] = (),
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        config = prepared.config
        self.prepared, self.config = prepared, config
        self.checkpoint_dir = Path(checkpoint_dir)
        self.callbacks = list(callbacks)
        self.should_stop = should_stop
        self.device = resolve_device(config.train.device)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.use_bf16 = _bf16_in_use(config.train.bf16, self.device)
        self.model = prepare_model(
            create_model(
                prepared.variant,
                seed=weights_seed(config.train),
                init=config.train.init,
                **prepared.overrides,
            ),
            self.device,
        )
        # anything a model draws while training (a plugin's dropout) follows the order seed
        torch.manual_seed(order_seed(config.train))
        self.train_split, self.val_split, self.test_split = (
            prepared.dataset.split(name) for name in ("train", "val", "test")
        )
        batch_size = config.data.batch_size
        self.steps_per_epoch = config.train.steps_per_epoch or max(
            1, len(self.train_split) // batch_size
        )
        self.eval_batch_size = config.data.eval_batch_size or 4 * batch_size
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(config.optim, config.train.epochs * self.steps_per_epoch)
        )
        ignore_index = prepared.dataset.info.ignore_index
        self.loss_fn = nn.CrossEntropyLoss(
            ignore_index=-100 if ignore_index is None else ignore_index
        )
        self.state = TrainState()
        self.resume_step = 0  # steps of the current epoch trained before a restore
        self.loss_sum, self.loss_count = torch.zeros((), device=self.device), 0  # this epoch's
        self.context: TrainContext | None = None  # what callbacks see; built by start()

    def fit(self, resume_from: str | Path | None = None) -> dict[str, float]:
        """Train (continuing the ``last.ckpt`` ``resume_from`` when given), then test the
        best weights. Returns the summary: ``best_*`` and ``test_*`` metrics."""
        if resume_from is not None:
            self.restore(resume_from)
        self.start()
        for epoch in self.remaining_epochs():
            started = time.perf_counter()
            metrics = {**self.train_epoch(epoch), **self.validate()}
            self.end_epoch(epoch, {**metrics, "epoch_time_s": time.perf_counter() - started})
            if self.state.stopped_early:
                break
        return self.test()

    def restore(self, checkpoint: str | Path) -> None:
        """Continue from a ``last.ckpt``: weights, optimizer, schedule, RNG, where training
        stands, and the running loss of an epoch stopped midway."""
        saved = load_training_state(checkpoint)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        self.state = TrainState(**saved["state"])
        self.resume_step = saved["step_in_epoch"]
        self.loss_sum += saved["loss_sum"]
        self.loss_count = saved["loss_count"]

    def start(self) -> None:
        """Build what callbacks see (the model's size and cost included) and tell them."""
        info = self.prepared.dataset.info
        plot_samples = min(self.config.train.plot_samples, len(self.val_split))
        self.context = TrainContext(
            self.config,
            self.prepared,
            self.model,
            self.device,
            self.optimizer,
            self.scheduler,
            self.state,
            self.checkpoint_dir,
            self.steps_per_epoch,
            self.val_split.get_batch(list(range(plot_samples))),
        )
        self.context.stats = {
            "params": float(count_params(self.model)),
            "flops_per_image": float(count_flops(self.model.config, info.image_size)),
            **{key: float(value) for key, value in kv_costs(self.model, info.image_size).items()},
        }
        self._notify("on_train_start")
        self.model.train()

    def remaining_epochs(self) -> range:
        """The epochs left to train (1-based): none once early stopping ended training."""
        last = self.config.train.epochs
        return range(last + 1 if self.state.stopped_early else self.state.epoch + 1, last + 1)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (what is left of it after a restore). Returns its loss, learning
        rate and throughput; raises :class:`NonFiniteLossError` when the loss diverged."""
        started = time.perf_counter()
        images_seen = 0
        batches = epoch_batches(
            len(self.train_split),
            self.config.data.batch_size,
            self.steps_per_epoch,
            order_seed(self.config.train),
            epoch,
        )
        first = self.resume_step
        for step, indices in enumerate(islice(batches, first, None), start=first):
            images_seen += self.train_step(epoch, step, indices)
            if self.should_stop():
                raise self.interrupt(step + 1)
        self.resume_step = 0
        train_time = time.perf_counter() - started
        train_loss = float(self.loss_sum) / max(1, self.loss_count)
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch} (train_loss={train_loss}); lower optim.lr or set optim.grad_clip"
            )
        return {
            "train_loss": train_loss,
            "lr": self.scheduler.get_last_lr()[0],
            "train_images_per_s": images_seen / train_time if train_time > 0 else float("nan"),
        }

    def train_step(self, epoch: int, step: int, indices: list[int]) -> int:
        """One optimizer step on the train split's samples ``indices``; returns how many
        images it saw."""
        augment_seed = sample_seed(order_seed(self.config.train), (epoch * 100_003 + step) * 7 + 3)
        images, masks = self.train_split.train_batch(indices, augment_seed)
        images, masks = to_device(images, self.device), masks.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            logits = self.model(images)
            loss = self.loss_fn(logits.float(), target_at(masks, logits.shape[-2:]))
            balance_loss = self.model.aux_loss()  # MoE load balancing (None without MoE)
            if balance_loss is not None:
                loss = loss + balance_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.optim.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.loss_sum += loss.detach()
        self.loss_count += 1
        self.state.global_step += 1
        self._notify("on_step_end", step, loss)
        return images.shape[0]

    def validate(self) -> dict[str, float]:
        """The val split's metrics; a stop request midway interrupts at the epoch's end."""
        metrics = self._evaluate(self.val_split, "val")
        if metrics is None:
            raise self.interrupt(self.steps_per_epoch)
        return metrics

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Record the epoch, keep the best weights, decide on early stopping, write
        ``last.ckpt`` and tell the callbacks."""
        improved = self.record_epoch(epoch, metrics)
        self.loss_sum, self.loss_count = torch.zeros((), device=self.device), 0
        patience = self.config.train.early_stopping_patience
        self.state.stopped_early = bool(
            patience and self.state.epochs_without_improvement >= patience
        )
        self.write_last(0)  # with the early-stop decision, so that a resume does not train on
        if improved:
            self._notify("on_checkpoint", self.context.best_checkpoint, "best")
        self._notify("on_epoch_end", metrics, improved)

    def record_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Add the epoch to the history; when :data:`MONITOR` improved, save its weights as
        ``best.safetensors``. Returns whether it improved."""
        state = self.state
        current = metrics[MONITOR]
        improved = current > state.best_metric or (
            state.best_epoch == 0 and not math.isnan(current)
        )
        state.epoch = epoch
        state.history.append({"epoch": float(epoch), **metrics})
        if not improved:
            state.epochs_without_improvement += 1
            return False
        state.best_metric, state.best_epoch, state.epochs_without_improvement = current, epoch, 0
        state.best_metrics = dict(metrics)
        metadata = {**self._identity(), "epoch": epoch, MONITOR: current}
        save_weights(self.context.best_checkpoint, self.model, metadata)
        return True

    def test(self) -> dict[str, float]:
        """Evaluate the best weights on the test split. Returns the run's summary (``best_*``
        and ``test_*`` metrics), which the callbacks also receive."""
        state = self.state
        summary = {"best_epoch": float(state.best_epoch), "epochs_trained": float(state.epoch)}
        summary.update(
            {
                f"best_{key}": value
                for key, value in state.best_metrics.items()
                if key.startswith("val_")
            }
        )
        self.load_best()
        per_image: list[Tensor] = []
        test = self._evaluate(self.test_split, "test", per_image)
        if test is None:
            raise TrainingInterrupted(self.stop_reason(), self.context.last_checkpoint)
        save_per_image(self.context.test_scores, per_image, self.prepared.dataset.info.class_names)
        summary.update(test)
        self._notify("on_train_end", summary)
        return summary

    def load_best(self) -> None:
        """Put the best epoch's weights back into the model (none before a first epoch)."""
        best = self.context.best_checkpoint
        if not self.state.best_epoch:
            return
        if not best.exists():
            raise CheckpointError(
                f"best checkpoint of epoch {self.state.best_epoch} is missing: {best}"
            )
        self.model.load_state_dict(read_weights(best)[0])

    def write_last(self, step_in_epoch: int) -> None:
        """Write ``last.ckpt``: everything a resume needs, ``step_in_epoch`` steps into the
        epoch after ``state.epoch``."""
        save_training_state(self.context.last_checkpoint, self.training_state(step_in_epoch))
        self._notify("on_checkpoint", self.context.last_checkpoint, "last")

    def training_state(self, step_in_epoch: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "state": self.state.to_dict(),
            "step_in_epoch": step_in_epoch,
            "loss_sum": float(self.loss_sum),
            "loss_count": self.loss_count,
            **self._identity(),
        }

    def interrupt(self, step_in_epoch: int) -> TrainingInterrupted:
        """Write a resumable ``last.ckpt`` and return the error that stops training."""
        self.write_last(step_in_epoch)
        return TrainingInterrupted(self.stop_reason(), self.context.last_checkpoint)

    def stop_reason(self) -> str:
        """The signal that asked to stop (a :class:`StopSignal` knows it), or a plain request."""
        return str(getattr(self.should_stop, "received", None) or "stop request")

    def _identity(self) -> dict[str, str]:
        """What a checkpoint needs to rebuild the model and name its run's config."""
        return {
            "model_config": self.model.config.model_dump_json(),
            "variant": self.prepared.variant,
            "experiment_config": self.config.model_dump_json(),
        }

    def _evaluate(
        self, split: Split, prefix: str, per_image: list[Tensor] | None = None
    ) -> dict[str, float] | None:
        return evaluate(
            self.model,
            split,
            self.eval_batch_size,
            self.prepared,
            self.device,
            prefix,
            self.should_stop,
            per_image,
        )

    def _notify(self, hook: str, *args: Any) -> None:
        """Call every callback's ``hook`` with the context and ``args``, in order."""
        for callback in self.callbacks:
            getattr(callback, hook)(self.context, *args)


def _bf16_in_use(requested: bool, device: torch.device) -> bool:
    """Whether to train in bf16: when ``train.bf16`` asks for it and ``device`` supports it
    (a warning says when it does not)."""
    usable = requested and bf16_supported(device)
    if requested and not usable:
        warnings.warn(
            f"train.bf16: {device.type} has no bf16 support here; training in float32",
            stacklevel=4,  # the caller of fit()
        )
    return usable


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
    :class:`TrainingInterrupted`. The steps are :class:`Trainer`'s.
    """
    return Trainer(prepared, checkpoint_dir, callbacks, should_stop).fit(resume_from)
