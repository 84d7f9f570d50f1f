"""The learning-rate schedule as documented (docs/configuration.md): ``optim.warmup_steps``
of linear warmup up to ``optim.lr``, then ``constant``, or ``cosine`` down to
``optim.min_lr_ratio`` of it at the last step. The expected values are worked out by hand
(cos 45 degrees = 0.70711), not by the code's formula."""

from __future__ import annotations

import pytest

from latentseg.config import OptimConfig
from latentseg.train import TrainCallback, fit, prepare
from latentseg.train.loop import lr_factor


def factors(optim: OptimConfig, total_steps: int, steps) -> list[float]:
    schedule = lr_factor(optim, total_steps)
    return [schedule(step) for step in steps]


def test_warmup_rises_in_equal_steps_to_the_peak_and_constant_holds_it():
    optim = OptimConfig(warmup_steps=4, schedule="constant")
    # the first step already learns (a quarter of lr), the fourth is at the peak
    assert factors(optim, 100, range(6)) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert factors(optim, 100, [50, 99, 500]) == [1.0, 1.0, 1.0]


def test_no_warmup_starts_at_the_peak():
    assert factors(OptimConfig(), 10, [0, 9]) == [1.0, 1.0]
    assert factors(OptimConfig(schedule="cosine"), 10, [0]) == [1.0]


def test_cosine_falls_from_the_peak_to_the_floor_over_the_steps_after_warmup():
    # 12 steps, 4 of warmup: the cosine spans steps 4..12, a quarter of it every 2 steps
    optim = OptimConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert factors(optim, 12, [3, 4, 6, 8, 10, 12]) == pytest.approx(
        [1.0, 1.0, 0.86820, 0.55, 0.23180, 0.1], abs=1e-5
    )
    assert factors(optim, 12, [13, 100]) == pytest.approx([0.1, 0.1])  # stays at the floor
    to_zero = OptimConfig(schedule="cosine")  # min_lr_ratio 0 by default
    assert factors(to_zero, 8, [0, 4, 8]) == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)


@pytest.mark.slow
def test_training_steps_at_the_scheduled_learning_rates(tiny, tmp_path):
    """The optimizer of a real run: 2 epochs of 3 steps, 2 of warmup, cosine to 0.1 x lr."""
    config = tiny(
        {
            "optim": {"lr": 0.01, "warmup_steps": 2, "schedule": "cosine", "min_lr_ratio": 0.1},
            "train": {"epochs": 2, "steps_per_epoch": 3},
        }
    )
    applied: dict[int, float] = {}  # step -> the learning rate that step uses

    class Record(TrainCallback):
        def on_train_start(self, context):
            applied[0] = context.optimizer.param_groups[0]["lr"]

        def on_step_end(self, context, step_in_epoch, loss):
            applied[context.state.global_step] = context.optimizer.param_groups[0]["lr"]

    fit(prepare(config), tmp_path / "ck", callbacks=[Record()])
    steps = range(6)
    assert [applied[step] for step in steps] == pytest.approx(
        [0.005, 0.01, 0.01, 0.0086820, 0.0055, 0.0023180], abs=1e-7
    )
