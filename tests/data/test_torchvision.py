"""The ``voc`` and ``oxford-pet`` readers, on small trees laid out exactly as the real releases
are; they need no torchvision. Where torchvision is usable (the default CPU torch 2.13.0 has no
matching build), one more test checks that they decode what torchvision's classes decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentseg.cli import main
from latentseg.data import create_dataset
from latentseg.data.images import normalise
from latentseg.data.torchvision_sets import PET_IGNORE, download, pet_trimap_labels
from latentseg.errors import DatasetError
from latentseg.testing import DatasetConformance
from tests.data.folders import palette_png, scene

SIZE = 40  # the fixtures' native size: read at it, samples are the files' pixels unchanged


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
    "install the pair torch==2.14.1 torchvision==0.29.1 to compare with its readers",
)


def make_voc(root, count=12, base="VOCdevkit/VOC2012"):
    """``count`` samples, ids 0-7 in train.txt and 8-11 in val.txt; the disc is 'person' (15),
    the square 'aeroplane' (1), outlines 255, masks palette PNGs as VOC ships them."""
    base = Path(root) / base
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    names = [f"2007_{i:06d}" for i in range(count)]
    for i, name in enumerate(names):
        image, labels = scene(i, size=SIZE)
        labels = np.where(labels == 2, 15, labels).astype(np.uint8)  # disc -> 'person'
        Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg")
        palette_png(labels, base / "SegmentationClass" / f"{name}.png")
    (base / "ImageSets/Segmentation/train.txt").write_text("\n".join(names[:8]) + "\n")
    (base / "ImageSets/Segmentation/val.txt").write_text("\n".join(names[8:]) + "\n")
    return Path(root)


PET_MODES = {"Abyssinian_0": "L", "Abyssinian_1": "CMYK", "Abyssinian_2": "RGBA"}


def make_pet(root, count=12):
    """``count`` samples, 9 in trainval.txt and 3 in test.txt; trimaps 1 pet, 2 background,
    3 border. Like a few real Pet files, ``PET_MODES`` images are grey, CMYK or RGBA (a PNG
    under a .jpg name)."""
    base = Path(root) / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations" / "trimaps").mkdir(parents=True)
    names = [f"Abyssinian_{i}" for i in range(count)]
    for i, name in enumerate(names):
        image, labels = scene(i, size=SIZE)
        trimap = np.full(labels.shape, 2, dtype=np.uint8)  # background
        trimap[labels == 2] = 1  # pet
        trimap[labels == 255] = 3  # border band
        picture = Image.fromarray(image)
        mode = PET_MODES.get(name, "RGB")
        if mode == "RGBA":
            picture.putalpha(
                Image.fromarray(
                    np.linspace(0, 255, SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE)
                )
            )
            picture.save(base / "images" / f"{name}.jpg", format="PNG")
        else:
            picture.convert(mode).save(base / "images" / f"{name}.jpg")
        Image.fromarray(trimap).save(base / "annotations" / "trimaps" / f"{name}.png")
    rows = [f"{n} 1 1 1" for n in names]
    (base / "annotations" / "trainval.txt").write_text("\n".join(rows[:9]) + "\n")
    (base / "annotations" / "test.txt").write_text("\n".join(rows[9:]) + "\n")
    return Path(root)


def voc_file(root, relative):
    return Path(root) / "VOCdevkit" / "VOC2012" / relative


def pet_file(root, relative):
    return Path(root) / "oxford-iiit-pet" / relative


def names_of(dataset):
    return {split: dataset.split(split).names for split in ("train", "val", "test")}


def sample(dataset, name):
    """(image, mask) of the sample read from ``name``'s files, whichever split holds it."""
    for split, names in names_of(dataset).items():
        if name in names:
            return dataset.split(split)[names.index(name)]
    raise AssertionError(f"{name} is in no split")


def as_read(path, convert="RGB"):
    """What a reader should make of ``path``: torchvision's ``Image.open(path).convert('RGB')``,
    normalised as latentseg holds images."""
    with Image.open(path) as image:
        array = np.array(image.convert(convert))
    return normalise(torch.from_numpy(array).permute(2, 0, 1)[None])[0]


def stored(path):
    with Image.open(path) as image:
        return np.array(image)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def pet_root(tmp_path_factory):
    return make_pet(tmp_path_factory.mktemp("pet"))


# ---------------------------------------------------------------------- conformance


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


# ---------------------------------------------------------------------- what is read


def test_voc_masks_are_palette_indices_and_images_the_jpeg_pixels(voc_root):
    dataset = create_dataset("voc", root=str(voc_root), image_size=SIZE)
    found = set()
    for split in ("train", "val", "test"):
        for name in dataset.split(split).names:
            image, mask = sample(dataset, name)
            labels = stored(voc_file(voc_root, f"SegmentationClass/{name}.png"))
            assert mask.tolist() == labels.tolist(), name  # indices, not the palette's colours
            assert torch.equal(image, as_read(voc_file(voc_root, f"JPEGImages/{name}.jpg")))
            found |= set(mask.unique().tolist())
    assert found == {0, 1, 15, 255}  # 'person' and the ignored outline survive as stored


def test_pet_images_in_grey_cmyk_or_rgba_become_rgb(pet_root):
    dataset = create_dataset("oxford-pet", root=str(pet_root), image_size=SIZE)
    for name, mode in PET_MODES.items():
        path = pet_file(pet_root, f"images/{name}.jpg")
        with Image.open(path) as image:
            assert image.mode == mode  # the fixture wrote what it says
            written = np.asarray(image)
        read, _ = sample(dataset, name)
        assert read.shape == (3, SIZE, SIZE)
        assert torch.equal(read, as_read(path))
        pixels = ((read * 0.25 + 0.5) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        if mode == "L":
            assert (pixels == written[..., None]).all()  # grey repeated in R, G and B
        if mode == "RGBA":
            assert (pixels == written[..., :3]).all()  # alpha dropped, not blended


def test_pet_trimaps_become_background_pet_and_an_ignored_border():
    trimap = np.array([[1, 2, 3]], dtype=np.uint8)
    assert pet_trimap_labels(trimap).tolist() == [[1, 0, PET_IGNORE]]


def test_pet_masks_are_the_trimaps_with_the_border_ignored(pet_root):
    dataset = create_dataset("oxford-pet", root=str(pet_root), image_size=SIZE)
    for name in ("Abyssinian_3", "Abyssinian_10"):
        trimap = stored(pet_file(pet_root, f"annotations/trimaps/{name}.png"))
        _, mask = sample(dataset, name)
        assert set(np.unique(trimap).tolist()) == {1, 2, 3}
        assert (mask.numpy() == np.select([trimap == 1, trimap == 2], [1, 0], 255)).all()


# ---------------------------------------------------------------------- splits


def test_voc_train_is_train_txt_and_val_txt_is_halved_by_the_seed(voc_root):
    val_ids = [f"2007_{i:06d}" for i in range(8, 12)]
    first = names_of(create_dataset("voc", root=str(voc_root), image_size=SIZE, seed=3))
    assert first["train"] == [f"2007_{i:06d}" for i in range(8)]
    assert len(first["val"]) == len(first["test"]) == 2
    assert sorted(first["val"] + first["test"]) == val_ids  # disjoint, and all of val.txt
    again = names_of(create_dataset("voc", root=str(voc_root), image_size=SIZE, seed=3))
    assert again == first
    others = [
        names_of(create_dataset("voc", root=str(voc_root), image_size=SIZE, seed=s))["val"]
        for s in range(4, 10)
    ]
    assert any(o != first["val"] for o in others), "the seed does not choose the halves"
    quarter = names_of(
        create_dataset("voc", root=str(voc_root), image_size=SIZE, val_fraction=0.25)
    )
    assert (len(quarter["val"]), len(quarter["test"])) == (1, 3)


def test_pet_trainval_is_halved_by_the_seed_and_test_is_test_txt(pet_root):
    first = names_of(create_dataset("oxford-pet", root=str(pet_root), image_size=SIZE, seed=1))
    assert first["test"] == ["Abyssinian_9", "Abyssinian_10", "Abyssinian_11"]
    assert (len(first["train"]), len(first["val"])) == (8, 1)  # val_fraction 0.1 of 9
    assert sorted(first["train"] + first["val"]) == sorted(f"Abyssinian_{i}" for i in range(9))
    again = names_of(create_dataset("oxford-pet", root=str(pet_root), image_size=SIZE, seed=1))
    assert again == first


def test_split_files_are_read_stripped_without_blank_lines_or_comments(tmp_path):
    voc = make_voc(tmp_path / "voc")
    lists = voc_file(voc, "ImageSets/Segmentation")
    (lists / "val.txt").write_text(
        "\n2007_000008  \r\n\n   2007_000009\n2007_000010\t\n2007_000011"
    )
    held_out = names_of(create_dataset("voc", root=str(voc), image_size=SIZE))
    assert sorted(held_out["val"] + held_out["test"]) == [f"2007_{i:06d}" for i in range(8, 12)]

    pet = make_pet(tmp_path / "pet")
    annotations = pet_file(pet, "annotations")
    (annotations / "test.txt").write_text(
        "#Image CLASS-ID SPECIES BREED ID\n# comments are skipped\n\n"
        "Abyssinian_9 1 1 1\n  Abyssinian_10 1 1 1  \n\nAbyssinian_11 1 1 1\n"
    )
    assert names_of(create_dataset("oxford-pet", root=str(pet), image_size=SIZE))["test"] == [
        "Abyssinian_9",
        "Abyssinian_10",
        "Abyssinian_11",
    ]


def test_a_requested_size_above_the_split_is_capped_with_a_note(voc_root):
    dataset = create_dataset(
        "voc", root=str(voc_root), image_size=SIZE, split_sizes={"train": 100, "val": 1}
    )
    assert len(dataset.split("train")) == 8 and len(dataset.split("val")) == 1
    assert dataset.notes == [f"data.train_size 100 capped at 8: voc {voc_root} has 8 train samples"]


def test_voc_2011_is_found_where_its_archive_extracts_it(tmp_path):
    make_voc(tmp_path, base="TrainVal/VOCdevkit/VOC2011")
    dataset = create_dataset("voc", root=str(tmp_path), year="2011", image_size=SIZE)
    assert len(dataset.split("train")) == 8


# ---------------------------------------------------------------------- broken trees


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


@pytest.mark.parametrize(
    ("dataset", "make", "missing", "listed_in"),
    [
        ("voc", make_voc, "VOCdevkit/VOC2012/JPEGImages/2007_000010.jpg", "val.txt"),
        ("voc", make_voc, "VOCdevkit/VOC2012/SegmentationClass/2007_000003.png", "train.txt"),
        ("oxford-pet", make_pet, "oxford-iiit-pet/images/Abyssinian_10.jpg", "test.txt"),
        (
            "oxford-pet",
            make_pet,
            "oxford-iiit-pet/annotations/trimaps/Abyssinian_4.png",
            "trainval.txt",
        ),
    ],
)
def test_a_listed_file_that_is_missing_is_named_in_one_line(
    tmp_path, dataset, make, missing, listed_in
):
    root = make(tmp_path)
    (root / missing).unlink()
    with pytest.raises(DatasetError) as err:
        create_dataset(dataset, root=str(root), image_size=SIZE)
    message = str(err.value)
    assert str(root / missing) in message and listed_in in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("dataset", "make", "broken"),
    [
        ("voc", make_voc, "VOCdevkit/VOC2012/JPEGImages/2007_000005.jpg"),
        ("voc", make_voc, "VOCdevkit/VOC2012/SegmentationClass/2007_000009.png"),
        ("oxford-pet", make_pet, "oxford-iiit-pet/annotations/trimaps/Abyssinian_11.png"),
    ],
)
def test_a_corrupt_file_is_named_in_one_line(tmp_path, dataset, make, broken):
    root = make(tmp_path)
    path = root / broken
    path.write_bytes(path.read_bytes()[:60])  # truncated mid-file, as by an interrupted copy
    with pytest.raises(DatasetError) as err:
        create_dataset(dataset, root=str(root), image_size=SIZE)
    message = str(err.value)
    assert f"cannot read {path}" in message and "\n" not in message


def test_a_mask_recoloured_to_rgb_is_refused_naming_it(tmp_path):
    root = make_voc(tmp_path)
    path = voc_file(root, "SegmentationClass/2007_000001.png")
    with Image.open(path) as mask:
        mask.convert("RGB").save(path)
    with pytest.raises(DatasetError, match=rf"cannot read {path}: mask is RGB"):
        create_dataset("voc", root=str(root), image_size=SIZE)


def test_a_mask_of_another_size_than_its_image_is_refused_naming_both(tmp_path):
    root = make_pet(tmp_path)
    path = pet_file(root, "annotations/trimaps/Abyssinian_2.png")
    with Image.open(path) as trimap:
        trimap.resize((20, 20), Image.NEAREST).save(path)
    with pytest.raises(DatasetError) as err:
        create_dataset("oxford-pet", root=str(root), image_size=SIZE)
    assert f"{path} is 20x20 but {pet_file(root, 'images/Abyssinian_2.jpg')} is 40x40" in str(
        err.value
    )


def test_an_image_above_the_pixel_limit_is_refused_naming_it(tmp_path):
    root = make_pet(tmp_path)
    path = pet_file(root, "images/Abyssinian_4.jpg")
    Image.new("RGB", (400, 300), (9, 9, 9)).save(path)
    Image.new("L", (400, 300), 2).save(pet_file(root, "annotations/trimaps/Abyssinian_4.png"))
    with pytest.raises(DatasetError) as err:
        create_dataset("oxford-pet", root=str(root), image_size=SIZE, max_pixels=100_000)
    assert str(err.value).startswith(f"cannot read {path}: 400x300 is 0.1 megapixels")
    assert "data.params.max_pixels" in str(err.value)
    dataset = create_dataset("oxford-pet", root=str(root), image_size=SIZE, max_pixels=120_000)
    _, mask = sample(dataset, "Abyssinian_4")
    assert mask.unique().tolist() == [0]  # the large pair read, fitted to 40x40


def test_datasets_check_passes_a_good_tree_and_fails_a_broken_one(tmp_path, capsys):
    root = make_voc(tmp_path)
    assert main(["datasets", "check", "voc", "--param", f"root={root}"]) == 0
    out = capsys.readouterr().out
    assert "train split: 8" in out and "person" in out and "ok: no problems found" in out
    voc_file(root, "SegmentationClass/2007_000011.png").unlink()
    assert main(["datasets", "check", "voc", "--param", f"root={root}"]) == 2
    assert "2007_000011.png does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------- download (optional)


def test_download_refuses_what_it_cannot_fetch_before_importing_torchvision(tmp_path):
    with pytest.raises(DatasetError, match=r"only 'voc' and 'oxford-pet'"):
        download("cityscapes", tmp_path)
    with pytest.raises(DatasetError, match=r"VOC year '2013'"):
        download("voc", tmp_path, year="2013")


@pytest.mark.skipif(WHY_NOT is None, reason="torchvision is usable here")
def test_without_torchvision_download_says_how_to_install_it(tmp_path):
    with pytest.raises(DatasetError, match=r"downloading needs torchvision.*torchvision==0.29.1"):
        download("voc", tmp_path)
    assert not any(tmp_path.iterdir())


@needs_torchvision
def test_the_readers_decode_what_torchvision_decodes(voc_root, pet_root):
    import torchvision.datasets as tv

    ours = create_dataset("voc", root=str(voc_root), image_size=SIZE)
    theirs = tv.VOCSegmentation(str(voc_root), year="2012", image_set="val")
    for i in range(len(theirs)):
        image, target = theirs[i]
        read_image, read_mask = sample(ours, Path(theirs.images[i]).stem)
        assert read_mask.tolist() == np.asarray(target).tolist()
        assert np.array_equal(
            ((read_image * 0.25 + 0.5) * 255).round().byte().permute(1, 2, 0).numpy(),
            np.asarray(image),
        )
    ours = create_dataset("oxford-pet", root=str(pet_root), image_size=SIZE)
    theirs = tv.OxfordIIITPet(str(pet_root), split="trainval", target_types="segmentation")
    for i in range(len(theirs)):
        image, trimap = theirs[i]
        read_image, read_mask = sample(ours, theirs._images[i].stem)
        assert read_mask.tolist() == pet_trimap_labels(np.asarray(trimap)).tolist()
        assert np.array_equal(
            ((read_image * 0.25 + 0.5) * 255).round().byte().permute(1, 2, 0).numpy(),
            np.asarray(image),
        )
