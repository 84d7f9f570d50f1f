"""The training loop's extension point: callbacks observe it; they never change its math.

The loop knows nothing of MLflow or Optuna; trackers and pruners are callbacks. What they see
of a run (:class:`TrainContext`, :class:`TrainState`) lives here, below the loop, so that the
loop imports this module and never the other way round.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentseg.config import ExperimentConfig
from latentseg.models import LatentSegModel
from latentseg.train.resolve import Prepared


@dataclass
class TrainState:
    """Where training stands; saved in ``last.ckpt`` and restored by ``--resume``."""

    epoch: int = 0  # last completed epoch (1-based); 0 before the first
    global_step: int = 0
    best_metric: float = float("-inf")  # best val_miou so far
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    stopped_early: bool = False  # early stopping ended training (a resume trains no more)
    best_metrics: dict[str, float] = field(default_factory=dict)  # val metrics at the best epoch
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch metrics

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# The test split's per-image scores, beside the checkpoints and in each run's artifacts.
TEST_SCORES = "test_per_image.npz"


@dataclass
class TrainContext:
    """What callbacks see of a training run."""

    config: ExperimentConfig
    prepared: Prepared
    model: LatentSegModel
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    state: TrainState
    checkpoint_dir: Path
    steps_per_epoch: int
    plot_batch: tuple[Tensor, Tensor]  # fixed val images and masks for plots
    stats: dict[str, float] = field(default_factory=dict)  # params, flops_per_image

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.ckpt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint_dir / "best.safetensors"

    @property
    def test_scores(self) -> Path:
        """The test split's per-image confusion matrices, written before ``on_train_end``."""
        return self.checkpoint_dir / TEST_SCORES


class TrainingPruned(Exception):
    """Raised by a callback (e.g. an Optuna pruner) to stop an unpromising run after ``epoch``."""

    def __init__(self, epoch: int, reason: str = "pruned") -> None:
        super().__init__(f"{reason} at epoch {epoch}")
        self.epoch = epoch


class TrainCallback:
    """Override what you need. ``context`` gives the model, data, config and checkpoint paths."""

    def on_train_start(self, context: TrainContext) -> None: ...

    def on_step_end(self, context: TrainContext, step_in_epoch: int, loss: Tensor) -> None:
        """Called every step with the (device) loss tensor; call ``.item()`` sparingly."""

    def on_epoch_end(
        self, context: TrainContext, metrics: dict[str, float], improved: bool
    ) -> None: ...

    def on_checkpoint(self, context: TrainContext, path: Path, kind: str) -> None:
        """``kind`` is 'last' (training state) or 'best' (weights)."""

    def on_train_end(self, context: TrainContext, summary: dict[str, float]) -> None:
        """``summary`` holds ``best_*`` and ``test_*`` metrics."""


class ConsoleProgress(TrainCallback):
    """A tqdm bar with live loss and val mIoU on a terminal; one plain line per epoch otherwise."""

    def __init__(self, stream=None, refresh_s: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.refresh_s = refresh_s
        self.bar = None
        self.last_miou = float("nan")
        self._last_refresh = 0.0

    def _open_bar(self, context: TrainContext) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=context.steps_per_epoch,
            desc=f"epoch {context.state.epoch + 1}/{context.config.train.epochs}",
            file=self.stream,
            leave=False,
            dynamic_ncols=True,
        )

    def on_step_end(self, context: TrainContext, step_in_epoch: int, loss: Tensor) -> None:
        if not self.tty:
            return
        if self.bar is None:
            self._open_bar(context)
            self.bar.update(step_in_epoch)
        self.bar.update(1)
        now = time.monotonic()
        if now - self._last_refresh > self.refresh_s:
            self._last_refresh = now
            self.bar.set_postfix(
                loss=f"{loss.item():.4f}",
                val_miou="-" if self.last_miou != self.last_miou else f"{self.last_miou:.3f}",
                refresh=False,
            )

    def on_epoch_end(
        self, context: TrainContext, metrics: dict[str, float], improved: bool
    ) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.last_miou = metrics["val_miou"]
        mark = " *" if improved else ""
        print(
            f"epoch {context.state.epoch}/{context.config.train.epochs}  train_loss {metrics['train_loss']:.4f}  "
            f"val_loss {metrics['val_loss']:.4f}  val_miou {metrics['val_miou']:.4f}  "
            f"({metrics['epoch_time_s']:.1f}s, {metrics['train_images_per_s']:.0f} img/s){mark}",
            file=self.stream,
            flush=True,
        )

    def on_train_end(self, context: TrainContext, summary: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        print(
            f"best val_miou {summary['best_val_miou']:.4f} at epoch {int(summary['best_epoch'])}; "
            f"test_miou {summary['test_miou']:.4f}",
            file=self.stream,
            flush=True,
        )
