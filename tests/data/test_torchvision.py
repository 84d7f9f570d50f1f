"""The torchvision adapters ``voc`` and ``oxford-pet``, on small trees laid out exactly as the
real releases are. Without a usable torchvision (the default CPU torch 2.13.0 has no
matching build) the tests that read through it skip, saying so; the rest always run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from latentseg.cli import main
from latentseg.data import create_dataset
from latentseg.data.torchvision_sets import PET_IGNORE, pet_trimap_labels
from latentseg.errors import DatasetError
from latentseg.testing import DatasetConformance
from tests.data.folders import palette_png, scene


def torchvision_usable() -> str | None:
    """None when torchvision imports beside this torch; else why not."""
    try:
        import torchvision.datasets  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError or an operator mismatch
        return f"{type(exc).__name__}: {exc}"
    return None


WHY_NOT = torchvision_usable()
needs_torchvision = pytest.mark.skipif(
    WHY_NOT is not None,
    reason=f"torchvision is not usable with torch {torch.__version__} here ({WHY_NOT}); "
    "install the pair torch==2.14.1 torchvision==0.29.1 to run the adapter tests",
)


def make_voc(root, count=12):
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    names = [f"2007_{i:06d}" for i in range(count)]
    for i, name in enumerate(names):
        image, labels = scene(i, size=40)
        labels = np.where(labels == 2, 15, labels).astype(np.uint8)  # disc -> 'person'
        Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg")
        palette_png(labels, base / "SegmentationClass" / f"{name}.png")
    (base / "ImageSets/Segmentation/train.txt").write_text("\n".join(names[:8]) + "\n")
    (base / "ImageSets/Segmentation/val.txt").write_text("\n".join(names[8:]) + "\n")
    return root


def make_pet(root, count=12):
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations" / "trimaps").mkdir(parents=True)
    names = [f"Abyssinian_{i}" for i in range(count)]
    for i, name in enumerate(names):
        image, labels = scene(i, size=40)
        trimap = np.full(labels.shape, 2, dtype=np.uint8)  # background
        trimap[labels == 2] = 1  # pet
        trimap[labels == 255] = 3  # border band
        Image.fromarray(image).save(base / "images" / f"{name}.jpg")
        Image.fromarray(trimap).save(base / "annotations" / "trimaps" / f"{name}.png")
    rows = [f"{n} 1 1 1" for n in names]
    (base / "annotations" / "trainval.txt").write_text("\n".join(rows[:9]) + "\n")
    (base / "annotations" / "test.txt").write_text("\n".join(rows[9:]) + "\n")
    return root


def test_missing_data_says_where_to_put_it_and_never_downloads(tmp_path, capsys):
    with pytest.raises(DatasetError) as err:
        create_dataset("voc", root=str(tmp_path))
    message = str(err.value)
    assert f"{tmp_path}/VOCdevkit/VOC2012" in message and "JPEGImages" in message
    assert "never downloads" in message
    with pytest.raises(DatasetError, match=r"oxford-iiit-pet.*annotations/trimaps"):
        create_dataset("oxford-pet", root=str(tmp_path))
    assert not any(tmp_path.iterdir())  # nothing was fetched or created
    assert main(["datasets", "check", "voc", "--param", f"root={tmp_path}"]) == 2
    assert "never downloads" in capsys.readouterr().err


def test_pet_trimaps_become_background_pet_and_an_ignored_border():
    trimap = np.array([[1, 2, 3]], dtype=np.uint8)
    assert pet_trimap_labels(trimap).tolist() == [[1, 0, PET_IGNORE]]


@pytest.mark.skipif(WHY_NOT is None, reason="torchvision is usable here")
def test_without_torchvision_the_error_says_how_to_install_it(tmp_path):
    with pytest.raises(DatasetError, match=r"torchvision.*torch==2.14.1.*torchvision==0.29.1"):
        create_dataset("voc", root=str(make_voc(tmp_path)))


@needs_torchvision
class TestVocConformance(DatasetConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, tmp_path_factory):
        cls.root = make_voc(tmp_path_factory.mktemp("voc"))
        return cls().make_dataset()

    def make_dataset(self):
        return create_dataset("voc", root=str(self.root), image_size=32, seed=0)

    def test_voc_splits_classes_and_outlines(self, dataset):
        assert dataset.info.num_classes == 21 and dataset.info.ignore_index == 255
        assert [len(dataset.split(s)) for s in ("train", "val", "test")] == [8, 2, 2]
        _, masks = dataset.split("train").get_batch(range(8))
        assert {0, 1, 15, 255} <= set(masks.unique().tolist())


@needs_torchvision
class TestOxfordPetConformance(DatasetConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, tmp_path_factory):
        cls.root = make_pet(tmp_path_factory.mktemp("pet"))
        return cls().make_dataset()

    def make_dataset(self):
        return create_dataset("oxford-pet", root=str(self.root), image_size=32, val_fraction=0.25)

    def test_pet_splits_and_labels(self, dataset):
        assert dataset.info.class_names == ("background", "pet")
        assert [len(dataset.split(s)) for s in ("train", "val", "test")] == [7, 2, 3]
        _, masks = dataset.split("test").get_batch(range(3))
        assert set(masks.unique().tolist()) == {0, 1, PET_IGNORE}
