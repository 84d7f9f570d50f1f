"""What may change when a run is resumed (latentseg.tracking.resume.check_resumable): only
keys that do not change what is computed; anything else is refused, naming the keys."""

from __future__ import annotations

import pytest

from latentseg.errors import ConfigError
from latentseg.tracking.resume import check_resumable


def test_more_epochs_patience_threads_and_tracking_keys_may_change(tiny):
    old = tiny()
    new = old.with_updates(
        {"train.epochs": 9, "train.early_stopping_patience": 3, "train.threads": 2,
         "tracking.experiment": "elsewhere"}
    )  # fmt: skip
    check_resumable(old, new, "run-1")  # no error


def test_a_change_in_what_is_computed_is_refused_naming_each_key(tiny):
    old = tiny()
    new = old.with_updates({"optim.lr": 0.1, "train.seed": 8, "train.epochs": 9})
    with pytest.raises(ConfigError) as info:
        check_resumable(old, new, "run-1")
    message = str(info.value)
    assert message.startswith("cannot resume run run-1: the config differs in ")
    assert "optim.lr: 0.003 -> 0.1" in message and "train.seed: 7 -> 8" in message
    assert "train.epochs" not in message.split(";")[0]  # allowed, so not named
