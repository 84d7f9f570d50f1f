"""Training: resolve a config, run the loop, write checkpoints. No MLflow in here."""

from latentseg.train.callbacks import ConsoleProgress, TrainCallback, TrainingPruned, TrainState
from latentseg.train.loop import (
    NonFiniteLossError,
    TrainContext,
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
    "TrainingInterrupted",
    "TrainingPruned",
    "evaluate",
    "fit",
    "prepare",
]
