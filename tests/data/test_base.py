"""The dataset protocol: ``split()`` is written once, in ``SegmentationDataset``, and the
generated datasets share one base."""

from __future__ import annotations

import pytest
import torch

from latentseg.data import (
    SPLITS,
    DatasetInfo,
    SegmentationDataset,
    TensorDataset,
    TensorSplit,
)
from latentseg.errors import ConfigError

INFO = DatasetInfo("tiny", 2, 1, ("background", "thing"), (4, 4))


def tiny_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)


def tiny_split() -> TensorSplit:
    return TensorSplit(*tiny_tensors())


def test_tensor_datasets_serve_their_splits_by_name():
    dataset = TensorDataset(INFO, {name: tiny_tensors() for name in SPLITS})
    assert len(dataset.split("test")) == 2
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        dataset.split("dev")


def test_a_dataset_filling_splits_inherits_split_and_its_name_check():
    class Tiny(SegmentationDataset):
        def __init__(self):
            self.info = INFO
            self._splits = {name: tiny_split() for name in SPLITS}

    dataset = Tiny()
    assert dataset.split("val") is dataset._splits["val"]
    with pytest.raises(
        ConfigError, match="unknown split 'valid'; expected one of train, val, test"
    ):
        dataset.split("valid")


def test_a_plugin_may_still_override_split():
    class OnDemand(SegmentationDataset):
        info = INFO

        def split(self, name):
            return tiny_split()

    assert len(OnDemand().split("train")) == 2


def test_a_dataset_with_neither_says_what_is_missing():
    class Empty(SegmentationDataset):
        info = INFO

    with pytest.raises(ConfigError, match="unknown split"):
        Empty().split("nope")
    with pytest.raises(NotImplementedError, match="Empty fills no _splits"):
        Empty().split("train")
