"""Test helpers for dataset authors.

``DatasetConformance`` is a pytest class: subclass it in a test module and say how to build
your dataset, and pytest runs the checks every latentseg dataset must pass::

    from latentseg.testing import DatasetConformance

    class TestStripes(DatasetConformance):
        def make_dataset(self):
            return create_dataset("stripes", split_sizes={"train": 32, "val": 8, "test": 8})

Build arguments can come from pytest fixtures too: override the class-scoped ``dataset``
fixture (a classmethod) and keep ``make_dataset`` for the determinism check, e.g. a fixture
that writes files under ``tmp_path_factory``, stores the path on ``cls`` and returns
``cls().make_dataset()``.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from latentseg.data.base import SPLITS, SegmentationDataset


class DatasetConformance:
    """Shapes, dtypes, label range, determinism and split disjointness of a dataset."""

    max_samples = 32  # samples read per split by the checks that scan a split

    def make_dataset(self) -> SegmentationDataset:
        raise NotImplementedError("subclasses define make_dataset() or a 'dataset' fixture")

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls) -> SegmentationDataset:
        return cls().make_dataset()

    # ------------------------------------------------------------------ helpers

    def _indices(self, dataset: SegmentationDataset, split: str) -> list[int]:
        return list(range(min(len(dataset.split(split)), self.max_samples)))

    # ------------------------------------------------------------------ checks

    def test_is_a_segmentation_dataset(self, dataset):
        assert isinstance(dataset, SegmentationDataset)

    def test_info_is_consistent(self, dataset):
        info = dataset.info
        assert info.num_classes >= 2, "a segmentation dataset needs background and a class"
        assert len(info.class_names) == info.num_classes
        assert len(set(info.class_names)) == info.num_classes, "class names must be unique"
        assert info.in_channels >= 1
        height, width = info.image_size
        assert height % 4 == 0 and width % 4 == 0, "the model's stride needs multiples of 4"
        if info.ignore_index is not None:
            assert not 0 <= info.ignore_index < info.num_classes, "ignore_index is a class"

    def test_every_split_has_samples(self, dataset):
        for split in SPLITS:
            assert len(dataset.split(split)) > 0, f"split {split} is empty"

    def test_batches_have_the_documented_shapes_and_dtypes(self, dataset):
        info = dataset.info
        for split in SPLITS:
            indices = self._indices(dataset, split)[:8]
            images, masks = dataset.split(split).get_batch(indices)
            assert images.dtype == torch.float32, f"{split}: images are {images.dtype}"
            assert masks.dtype == torch.int64, f"{split}: masks are {masks.dtype}"
            assert tuple(images.shape) == (len(indices), info.in_channels, *info.image_size)
            assert tuple(masks.shape) == (len(indices), *info.image_size)
            assert torch.isfinite(images).all(), f"{split}: non-finite pixels"

    def test_getitem_is_one_sample_of_get_batch(self, dataset):
        split = dataset.split("train")
        images, masks = split.get_batch([0])
        image, mask = split[0]
        assert torch.equal(image, images[0]) and torch.equal(mask, masks[0])
        with pytest.raises(IndexError):
            split[len(split)]

    def test_labels_are_classes_or_the_ignore_index(self, dataset):
        info = dataset.info
        allowed = set(range(info.num_classes)) | (
            {info.ignore_index} if info.ignore_index is not None else set()
        )
        for split in SPLITS:
            _, masks = dataset.split(split).get_batch(self._indices(dataset, split))
            found = set(masks.unique().tolist())
            assert found <= allowed, f"{split}: labels {sorted(found - allowed)} out of range"

    def test_some_pixels_are_not_background(self, dataset):
        _, masks = dataset.split("train").get_batch(self._indices(dataset, "train"))
        valid = (
            masks
            if dataset.info.ignore_index is None
            else masks[masks != dataset.info.ignore_index]
        )
        assert (valid > 0).any(), "every train pixel is background: nothing to learn"

    def test_a_second_build_gives_the_same_samples(self, dataset):
        again = self.make_dataset()
        for split in SPLITS:
            indices = self._indices(dataset, split)[:8]
            a_images, a_masks = dataset.split(split).get_batch(indices)
            b_images, b_masks = again.split(split).get_batch(indices)
            assert torch.equal(a_images, b_images) and torch.equal(a_masks, b_masks), split

    def test_train_batches_are_seeded_and_keep_the_shapes(self, dataset):
        split = dataset.split("train")
        indices = self._indices(dataset, "train")[:4]
        images, masks = split.train_batch(indices, seed=1)
        again_images, again_masks = split.train_batch(indices, seed=1)
        assert torch.equal(images, again_images) and torch.equal(masks, again_masks)
        plain_images, plain_masks = split.get_batch(indices)
        assert images.shape == plain_images.shape and masks.shape == plain_masks.shape
        assert images.dtype == torch.float32 and masks.dtype == torch.int64

    def test_splits_share_no_sample(self, dataset):
        seen: dict[str, str] = {}
        for split in SPLITS:
            images, masks = dataset.split(split).get_batch(self._indices(dataset, split))
            for i in range(images.shape[0]):
                digest = hashlib.blake2b(
                    images[i].numpy().tobytes() + masks[i].numpy().tobytes(), digest_size=16
                ).hexdigest()
                other = seen.get(digest)
                assert other is None or other == split, (
                    f"sample {split}[{i}] also appears in {other}"
                )
                seen[digest] = split
