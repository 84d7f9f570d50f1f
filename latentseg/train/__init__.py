"""Training: resolve a config, run the loop, write checkpoints. No MLflow in here."""

from latentseg.train.callbacks import (
    ConsoleProgress,
    TrainCallback,
    TrainContext,
    TrainingPruned,
    TrainState,
)
from latentseg.train.loop import (
    NonFiniteLossError,
    Trainer,
    TrainingInterrupted,
    evaluate,
    fit,
)
from latentseg.train.resolve import Prepared, prepare

__all__ = [
    "ConsoleProgress",
    "NonFiniteLossError",
    "Prepared",
    "TrainCallback",
    "TrainContext",
    "TrainState",
    "Trainer",
    "TrainingInterrupted",
    "TrainingPruned",
    "evaluate",
    "fit",
    "prepare",
]
