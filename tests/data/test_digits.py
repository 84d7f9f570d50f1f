"""``digits``, and the conformance suite on every generated built-in."""

from __future__ import annotations

import pytest
import torch

from latentseg.data import create_dataset
from latentseg.data.digits import digit_images, digit_pools
from latentseg.errors import ConfigError
from latentseg.testing import DatasetConformance

SIZES = {"train": 48, "val": 16, "test": 16}


class TestShapesConformance(DatasetConformance):
    def make_dataset(self):
        return create_dataset("shapes", split_sizes=SIZES, image_size=32)


class TestNoiseConformance(DatasetConformance):
    def make_dataset(self):
        return create_dataset("noise", split_sizes=SIZES, image_size=32)


class TestDigitsConformance(DatasetConformance):
    def make_dataset(self):
        return create_dataset("digits", split_sizes=SIZES, image_size=48)


def test_digits_are_the_1797_scikit_learn_images_in_disjoint_pools():
    images, labels = digit_images()
    assert images.shape == (1797, 8, 8) and float(images.max()) == 1.0
    assert sorted(labels.unique().tolist()) == list(range(10))
    pools = digit_pools()
    sets = {name: set(pool.tolist()) for name, pool in pools.items()}
    assert sum(map(len, sets.values())) == 1797
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"])
    assert not (sets["val"] & sets["test"])
    # the pools do not move with the data seed: val never sees a train image, whatever the seed
    dataset = create_dataset("digits", split_sizes=SIZES, seed=5)
    for split, start in (("train", 0), ("val", 48), ("test", 64)):
        used = {
            i for scene in dataset.source_indices(split, range(start, start + 16)) for i in scene
        }
        assert used <= sets[split], split


def test_each_digit_pixel_is_labelled_digit_plus_one():
    dataset = create_dataset(
        "digits", split_sizes=SIZES, min_digits=1, max_digits=1, noise=0.0, texture=0.0
    )
    _, labels = digit_images()
    masks = dataset.split("train").get_batch(range(16))[1]
    sources = dataset.source_indices("train", range(16))
    for mask, (source,) in zip(masks, sources, strict=True):
        assert set(mask.unique().tolist()) == {0, int(labels[source]) + 1}
    assert dataset.info.num_classes == 11 and dataset.info.class_names[1] == "digit0"


def test_digits_params_are_validated():
    with pytest.raises(ConfigError, match="data.params.image_size: .*multiple of 4"):
        create_dataset("digits", image_size=50)
    with pytest.raises(ConfigError, match="min_digits"):
        create_dataset("digits", min_digits=5, max_digits=2)
    with pytest.raises(ConfigError, match="unknown key 'data.params.colour'"):
        create_dataset("digits", colour=True)


def test_a_different_data_seed_gives_different_scenes_from_the_same_pools():
    a = create_dataset("digits", split_sizes=SIZES, seed=0).split("val").get_batch([0])[0]
    b = create_dataset("digits", split_sizes=SIZES, seed=1).split("val").get_batch([0])[0]
    assert not torch.equal(a, b)
