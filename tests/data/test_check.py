"""`latentseg datasets check` on a registered dataset (latentseg.data.check): every split is
read, the class histogram counts the pixels the masks hold, and labels outside the classes
are named with where they are."""

from __future__ import annotations

import dataclasses
from collections import Counter

from latentseg.data import create_dataset
from latentseg.data.check import check_dataset, check_target

SIZES = {"train": 8, "val": 4, "test": 4}


def test_a_generated_dataset_checks_clean_with_its_histogram():
    report = check_target("shapes", {"image_size": 16}, max_samples=4)  # a name and params
    assert report.ok and report.kind == "dataset" and report.target == "shapes"
    default = create_dataset("shapes", image_size=16)
    assert report.counts == {f"{name} split": len(default.split(name)) for name in SIZES}
    dataset = create_dataset("shapes", split_sizes=SIZES, image_size=16)
    report = check_dataset(dataset, "shapes")
    pixels = Counter()
    for name, size in SIZES.items():
        masks = dataset.split(name).get_batch(list(range(size)))[1]
        pixels.update(masks.flatten().tolist())
    assert report.histogram == pixels
    assert "ok: no problems found" in report.render()


def test_labels_outside_the_classes_are_named_with_their_split():
    dataset = create_dataset("shapes", split_sizes=SIZES, image_size=16)
    dataset.info = dataclasses.replace(dataset.info, num_classes=2)  # fewer than it draws
    report = check_dataset(dataset, "shapes")
    assert not report.ok
    assert {p.kind for p in report.problems} == {"label out of range"}
    assert {p.path for p in report.problems} == {"train[0:8]", "val[0:4]", "test[0:4]"}
    assert all("outside 0..1" in p.detail for p in report.problems)
