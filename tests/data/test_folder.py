"""The ``folder`` dataset and ``latentseg datasets check`` on hand-made folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from latentseg.cli import main
from latentseg.data import create_dataset
from latentseg.data.folder import Folder, FolderParams, load_folder
from latentseg.data.folder_scan import scan_folder
from latentseg.errors import DatasetError, LatentSegError
from latentseg.testing import DatasetConformance
from tests.data.folders import IGNORE, break_folder, folder_config, make_folder, palette_png, scene


class TestFolderConformance(DatasetConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, tmp_path_factory):
        cls.root = make_folder(tmp_path_factory.mktemp("folder"))
        return cls().make_dataset()

    def make_dataset(self):
        return create_dataset(
            "folder", root=str(self.root), augment={"hflip": 0.5, "scale": [0.8, 1.25]}
        )


def test_the_dataset_from_a_scan_is_the_dataset_opened_directly(tmp_path):
    # `datasets check` scans once and builds the dataset from that scan (each file read once)
    root = make_folder(tmp_path / "data", count=10, size=16)
    params = FolderParams(root=str(root), image_size=16)
    direct = Folder(root=str(root), image_size=16, seed=3)
    scanned = Folder.from_scan(load_folder(params), params, None, seed=3)
    assert scanned.info == direct.info
    for name in ("train", "val", "test"):
        assert scanned.split(name).names == direct.split(name).names
        indices = list(range(len(direct.split(name))))
        for ours, theirs in zip(
            scanned.split(name).get_batch(indices),
            direct.split(name).get_batch(indices),
            strict=True,
        ):
            assert torch.equal(ours, theirs)


def test_a_hand_made_folder_reads_jpeg_images_palette_masks_and_classes_yaml(tmp_path):
    root = make_folder(tmp_path / "data")
    dataset = create_dataset("folder", root=str(root), seed=0)
    info = dataset.info
    assert info.class_names == ("background", "square", "disc")
    assert (info.num_classes, info.in_channels, info.image_size, info.ignore_index) == (
        3,
        3,
        (32, 32),
        IGNORE,
    )
    sizes = [len(dataset.split(s)) for s in ("train", "val", "test")]
    assert sizes == [20, 2, 2]  # 24 images, seeded 10% / 10%
    names = [n for s in ("train", "val", "test") for n in dataset.split(s).names]
    assert sorted(names) == [f"img{i:03d}" for i in range(24)]  # every image once
    # the palette mask's indices are the labels, exactly as written
    split = dataset.split("train")
    stem = split.names[0]
    _, masks = split.get_batch([0])
    assert torch.equal(masks[0], torch.from_numpy(scene(int(stem[3:]))[1].astype(np.int64)))


@pytest.mark.slow
def test_the_acceptance_folder_checks_clean_and_trains(tmp_path, tiny_yaml, tracking_uri, capsys):
    root = make_folder(tmp_path / "data")
    assert main(["datasets", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "ok: no problems found" in out and "image+mask pairs: 24" in out
    assert "square" in out and "(ignore)" in out  # the histogram names classes and the ignore band
    path = tiny_yaml(folder_config(root))
    assert main(["train", str(path), "--tracking-uri", tracking_uri]) == 0
    run = MlflowClient(tracking_uri).search_runs(
        [MlflowClient(tracking_uri).get_experiment_by_name("tests").experiment_id]
    )[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["data.train_size"] == "20"  # the resolved size, not null
    assert {"val_miou", "val_iou_square", "val_iou_disc"} <= set(run.data.metrics)


def test_a_resized_mask_and_an_out_of_range_label_exit_2_naming_both_before_any_run(
    tmp_path, tiny_yaml, capsys
):
    tracking_uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"  # not made yet
    root = make_folder(tmp_path / "data")
    resized, bad_label = break_folder(root)
    assert main(["datasets", "check", str(root)]) == 2
    out = capsys.readouterr().out
    assert f"{resized}: mask is 16x16 but images/img003.jpg is 32x32" in out
    assert f"{bad_label}: value(s) 7 outside classes 0..2, ignore 255" in out
    path = tiny_yaml(folder_config(root))
    assert main(["train", str(path), "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err
    assert resized in err and bad_label in err and "2 problem(s)" in err
    assert not (tmp_path / "store").exists()  # no MLflow store was even created


def test_check_reports_missing_extra_unreadable_and_lossy_files(tmp_path, capsys):
    root = make_folder(tmp_path / "data", count=8)
    (root / "masks" / "img001.png").unlink()  # an image without its mask
    palette_png(scene(50)[1], root / "masks" / "orphan.png")  # a mask without its image
    (root / "images" / "img002.jpg").write_bytes(b"not a jpeg at all")
    Image.fromarray(scene(4)[1]).save(root / "masks" / "img004.jpg")  # a JPEG mask
    (root / "images" / "notes.txt").write_text("hello")
    assert main(["datasets", "check", str(root), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    problems = {(p["kind"], p["path"]) for p in report["problems"]}
    assert ("missing mask", "images/img001.jpg") in problems
    assert ("extra mask", "masks/orphan.png") in problems
    assert ("unreadable", "images/img002.jpg") in problems
    assert ("unsupported file", "masks/img004.jpg") in problems
    assert ("unsupported file", "images/notes.txt") in problems
    lossy = next(p for p in report["problems"] if p["path"] == "masks/img004.jpg")
    assert "JPEG" in lossy["detail"]
    hist = {row["class"]: row["pixels"] for row in report["histogram"]}
    assert hist["square"] > 0 and hist["disc"] > 0 and hist["(ignore)"] > 0


def test_many_problems_of_one_kind_name_the_first_files_and_count_the_rest(tmp_path):
    root = make_folder(tmp_path / "data", count=12)
    for i in range(9):
        (root / "masks" / f"img{i:03d}.png").unlink()
    with pytest.raises(DatasetError) as err:
        create_dataset("folder", root=str(root))
    message = str(err.value)
    assert "missing mask (9):" in message and "images/img000.jpg" in message
    assert "... and 4 more" in message and "latentseg datasets check" in message


def test_rgb_masks_need_colours_and_are_read_through_them(tmp_path):
    root = make_folder(tmp_path / "data", count=10)
    colours = {0: (0, 0, 0), 1: (220, 40, 40), 2: (40, 200, 60), IGNORE: (255, 255, 255)}
    _, labels = scene(3)
    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    for value, colour in colours.items():
        rgb[labels == value] = colour
    Image.fromarray(rgb).save(root / "masks" / "img003.png")
    # the ignore band's white is not a class colour: named as a bad mask
    scan = scan_folder(root)
    assert [(p.kind, p.path) for p in scan.problems] == [("bad mask", "masks/img003.png")]
    assert "(255, 255, 255)" in scan.problems[0].detail
    rgb[labels == IGNORE] = colours[0]
    Image.fromarray(rgb).save(root / "masks" / "img003.png")
    assert scan_folder(root).problems == []
    (root / "classes.yaml").write_text(
        yaml.safe_dump({"names": ["background", "square", "disc"], "ignore_index": IGNORE})
    )
    scan = scan_folder(root)
    assert [p.kind for p in scan.problems] == ["bad mask"] and "classes.yaml" in scan.problems[
        0
    ].detail


def test_grey_images_give_one_channel_and_sizes_are_fitted(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(10):
        image, labels = scene(i, size=40)
        Image.fromarray(image[..., 0]).resize((48, 40)).save(root / "images" / f"g{i}.png")
        Image.fromarray(labels).resize((48, 40), Image.NEAREST).save(root / "masks" / f"g{i}.png")
    dataset = create_dataset("folder", root=str(root))
    assert dataset.info.in_channels == 1 and dataset.info.image_size == (40, 48)
    assert dataset.info.ignore_index is None and dataset.info.num_classes == 256  # inferred
    resized = create_dataset("folder", root=str(root), image_size=32, ignore_index=255)
    assert resized.info.image_size == (32, 32) and resized.info.num_classes == 3
    cropped = create_dataset("folder", root=str(root), image_size=[32, 32], fit="crop", channels=3)
    images, masks = cropped.split("train").get_batch([0])
    assert images.shape == (1, 3, 32, 32) and masks.shape == (1, 32, 32)


def test_images_of_different_sizes_need_image_size(tmp_path):
    root = make_folder(tmp_path / "data", count=10)
    image, labels = scene(0, size=48)
    Image.fromarray(image).save(root / "images" / "img000.jpg")
    palette_png(labels, root / "masks" / "img000.png")
    with pytest.raises(DatasetError, match=r"differ in size .*images/img000: 48x48.*image_size"):
        create_dataset("folder", root=str(root))
    assert create_dataset("folder", root=str(root), image_size=32).info.image_size == (32, 32)


def test_splits_yaml_decides_the_splits_and_is_validated(tmp_path):
    root = make_folder(tmp_path / "data", count=10)
    splits = {
        "train": [f"img{i:03d}" for i in range(6)],
        "val": ["img006", "img007.jpg"],
        "test": ["img008"],
    }
    (root / "splits.yaml").write_text(yaml.safe_dump(splits))
    dataset = create_dataset("folder", root=str(root))
    assert dataset.split("val").names == ["img006", "img007"]
    assert dataset.split("test").names == ["img008"]  # img009 is in no split: unused
    splits["test"] = ["img005", "nope"]
    (root / "splits.yaml").write_text(yaml.safe_dump(splits))
    problems = {(p.kind, p.detail) for p in scan_folder(root).problems}
    assert ("split overlap", "'img005' is in both train and test") in problems
    assert ("unknown stem in splits", "test: 'nope' has no image+mask pair") in problems


def test_bad_structure_and_classes_files_are_named(tmp_path, capsys):
    with pytest.raises(DatasetError, match="is not a directory"):
        create_dataset("folder", root=str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no masks/ directory"):
        create_dataset("folder", root=str(tmp_path / "empty"))
    root = make_folder(tmp_path / "data", count=6)
    (root / "classes.yaml").write_text("names: [background, a]\nignore_index: 1\n")
    with pytest.raises(DatasetError, match=r"classes.yaml: .*ignore_index 1 is a class index"):
        create_dataset("folder", root=str(root))
    (root / "classes.yaml").write_text("names: [background, a]\ncolors: [[0, 0, 0]]\n")
    with pytest.raises(DatasetError, match="1 colours for 2 names"):
        create_dataset("folder", root=str(root))
    with pytest.raises(LatentSegError, match="data.params.image_sise"):
        create_dataset("folder", root=str(root), image_sise=32)
    assert main(["datasets", "check", str(tmp_path / "nowhere" / "x")]) == 2
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.slow
def test_a_size_cap_larger_than_the_split_takes_the_whole_split_and_says_so(
    tmp_path, tiny_yaml, tracking_uri
):
    """As docs/datasets.md says: on real data a size caps. Asking for more than the split holds
    takes all of it, and the run records (and prints) the cap."""
    from mlflow import MlflowClient

    root = make_folder(tmp_path / "data", count=10)
    dataset = create_dataset("folder", root=str(root), split_sizes={"train": 4})
    assert len(dataset.split("train")) == 4 and dataset.notes == []
    dataset = create_dataset("folder", root=str(root), split_sizes={"train": 50})
    assert len(dataset.split("train")) == 8
    (note,) = dataset.notes
    assert note == f"data.train_size 50 capped at 8: folder {root} has 8 train samples"

    config = tiny_yaml({"data": {"dataset": "folder", "params": {"root": str(root)}, "train_size": 50,
                                 "val_size": None, "test_size": None}, "train": {"epochs": 1}})  # fmt: skip
    assert main(["train", str(config), "--tracking-uri", tracking_uri, "--no-progress"]) == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.data.tags["latentseg.data_notes"] == note


def test_augmentations_move_image_and_mask_together_and_pad_with_the_ignore_index(tmp_path):
    root = make_folder(tmp_path / "data", count=10)
    flip = create_dataset("folder", root=str(root), augment={"hflip": 1.0}).split("train")
    images, masks = flip.get_batch([0, 1])
    flipped_images, flipped_masks = flip.train_batch([0, 1], seed=3)
    assert torch.equal(flipped_masks, masks.flip(-1))
    assert torch.allclose(flipped_images, images.flip(-1), atol=1e-5)
    zoom_out = create_dataset("folder", root=str(root), augment={"scale": [0.5, 0.5]}).split(
        "train"
    )
    _, masks = zoom_out.train_batch([0], seed=5)
    assert (masks[0, 0, :] == IGNORE).all() or (masks[0, -1, :] == IGNORE).all()  # a padded border
    inner = masks[masks != IGNORE]
    assert set(inner.unique().tolist()) <= {0, 1, 2}
    crop = create_dataset("folder", root=str(root), augment={"crop": 0.5}).split("train")
    first, _ = crop.train_batch([0], seed=1)
    second, _ = crop.train_batch([0], seed=2)
    assert not torch.equal(first, second)  # a different crop per seed
    with pytest.raises(LatentSegError, match="scale"):
        create_dataset("folder", root=str(root), augment={"scale": [2, 1]})


def test_the_ignore_index_is_left_out_of_the_loss_and_every_metric(tmp_path, tiny):
    from latentseg.models import create_model
    from latentseg.train.evaluate import evaluate, target_at
    from latentseg.train.resolve import prepare

    root = make_folder(tmp_path / "data", count=10)
    config = tiny(folder_config(root))
    prepared = prepare(config)
    torch.manual_seed(0)
    model = create_model(prepared.variant, **prepared.overrides).eval()
    split = prepared.dataset.split("val")
    metrics = evaluate(model, split, 8, prepared, torch.device("cpu"), "val")
    images, masks = split.get_batch(range(len(split)))
    with torch.no_grad():
        raw = model(images)
    logits = torch.nn.functional.interpolate(raw, size=masks.shape[-2:], mode="bilinear")
    prediction = logits.argmax(1)
    keep = masks != IGNORE
    assert (~keep).any()
    expected_accuracy = (prediction[keep] == masks[keep]).double().mean().item()
    assert metrics["val_pixel_accuracy"] == pytest.approx(expected_accuracy, abs=1e-9)
    target = target_at(masks, raw.shape[-2:])
    assert (target == IGNORE).any()  # the loss sees ignore pixels too, and must skip them
    loss = torch.nn.functional.cross_entropy(raw, target, ignore_index=IGNORE)
    assert metrics["val_loss"] == pytest.approx(loss.item(), rel=1e-4)


def test_sixteen_bit_masks_keep_a_large_ignore_value(tmp_path):
    root = make_folder(tmp_path / "data", count=10)
    for i in range(10):
        labels = scene(i)[1].astype(np.uint16)
        labels[labels == IGNORE] = 65535
        Image.fromarray(labels).save(root / "masks" / f"img{i:03d}.png")  # mode I;16
    (root / "classes.yaml").write_text(
        yaml.safe_dump({"names": ["background", "square", "disc"], "ignore_index": 65535})
    )
    dataset = create_dataset("folder", root=str(root))
    _, masks = dataset.split("train").get_batch(range(4))
    assert dataset.info.ignore_index == 65535 and set(masks.unique().tolist()) == {0, 1, 2, 65535}


def test_more_mistakes_are_named_not_tracebacks(tmp_path, tiny_yaml, capsys):
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    assert main(["datasets", "check", str(empty)]) == 2
    assert "no image+mask pairs" in capsys.readouterr().out
    root = make_folder(tmp_path / "data", count=10)
    assert main(["datasets", "check", str(root), "--param", "ignore_index=1"]) == 2
    assert "ignore_index 1 is class 'square'" in capsys.readouterr().out
    assert main(["datasets", "check", str(root), "--param", "workers"]) == 2
    assert "--param 'workers': expected KEY=VALUE" in capsys.readouterr().err
    # an experiment's sizes and seed are checked as training would use them
    path = tiny_yaml(
        folder_config(root) | {"data": folder_config(root)["data"] | {"train_size": 50}}
    )
    assert main(["datasets", "check", str(path)]) == 0  # a size caps on real data
    assert "data.train_size 50 capped at 8" in capsys.readouterr().out
    (root / "classes.yaml").write_text(
        "names: [a, b, c]\ncolours: [[0, 0, 0], [1, 1, 1], [0, 0, 0]]\n"
    )
    with pytest.raises(DatasetError, match="colours must be unique"):
        create_dataset("folder", root=str(root))


def test_splits_yaml_numeric_stems_and_repeats(tmp_path):
    root = tmp_path / "data"
    make_folder(root, count=6)
    for i in range(6):  # stems that YAML reads as numbers
        (root / "images" / f"img{i:03d}.jpg").rename(root / "images" / f"{i}.jpg")
        (root / "masks" / f"img{i:03d}.png").rename(root / "masks" / f"{i}.png")
    (root / "splits.yaml").write_text("train: [0, 1, 2, 2]\nval: [3]\ntest: [4]\n")
    problems = [(p.kind, p.detail) for p in scan_folder(root).problems]
    assert problems == [("split overlap", "'2' is twice in train")]
    (root / "splits.yaml").write_text("train: [0, 1, 2]\nval: [3]\ntest: [4]\n")
    assert create_dataset("folder", root=str(root)).split("val").names == ["3"]
