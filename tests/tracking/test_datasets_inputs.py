"""A run's train / val / test data as MLflow dataset inputs (real MLflow, SQLite store in a
temp dir): what the run page lists and what the runs table filters on."""

import json

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from latentseg.data import create_dataset
from latentseg.tracking import run_experiment
from latentseg.tracking.datasets import dataset_inputs, log_dataset_inputs
from latentseg.tracking.store import connect, get_or_create_experiment
from latentseg.train import prepare
from tests.conftest import deep_update
from tests.data.folders import folder_config, make_folder


def inputs_of(config) -> dict:
    """Split -> its DatasetInput, for ``config`` as ``run_experiment`` opens it."""
    prepared = prepare(config)
    inputs = dataset_inputs(prepared.config, prepared.dataset)
    return {_context(i): i for i in inputs}


def digests(config) -> dict[str, str]:
    return {split: i.dataset.digest for split, i in inputs_of(config).items()}


def _context(dataset_input) -> str:
    (tag,) = [t for t in dataset_input.tags if t.key == "mlflow.data.context"]
    return tag.value


def folder_updates(root, **params) -> dict:
    """The folder tests' data section (:func:`tests.data.folders.folder_config`'s)."""
    return {"data": folder_config(root, **params)["data"]}


def test_a_generated_dataset_gives_one_input_per_split_named_profiled_and_from_code(tiny):
    inputs = inputs_of(tiny())
    assert list(inputs) == ["train", "val", "test"]
    for split, rows in (("train", 64), ("val", 16), ("test", 16)):
        dataset = inputs[split].dataset
        assert dataset.name == "shapes"
        assert dataset.source_type == "code"
        tags = json.loads(dataset.source)["tags"]
        assert tags["latentseg.generator"] == "latentseg.data.synthetic.Shapes"
        assert tags["latentseg.data_seed"] == "0"
        assert json.loads(dataset.profile) == {
            "num_rows": rows,
            "image_size": [32, 32],
            "in_channels": 3,
            "num_classes": 4,
        }
        assert "mlflow_tensorspec" in json.loads(dataset.schema)
        assert len(dataset.digest) == 10
    assert len({i.dataset.digest for i in inputs.values()}) == 3  # the splits differ


def test_the_digest_follows_the_data_and_nothing_else(tiny):
    base = digests(tiny())
    assert digests(tiny()) == base  # deterministic
    # what training does with the data is not the data
    assert digests(tiny({"train": {"seed": 8, "epochs": 5}, "optim": {"lr": 0.1}})) == base
    assert digests(tiny({"data": {"batch_size": 4, "params": {"cache": False}}})) == base
    # a default given explicitly is the same dataset
    assert digests(tiny({"data": {"params": {"noise": 0.08}}})) == base

    assert set(digests(tiny({"data": {"seed": 1}})).values()).isdisjoint(base.values())
    assert digests(tiny({"data": {"params": {"noise": 0.2}}}))["val"] != base["val"]
    # generated samples are numbered across the splits: more train samples shift val and test
    more_train = digests(tiny({"data": {"train_size": 72}}))
    assert all(more_train[s] != base[s] for s in ("train", "val", "test"))
    # ... while a larger test split leaves train and val as they were
    more_test = digests(tiny({"data": {"test_size": 24}}))
    assert (more_test["train"], more_test["val"]) == (base["train"], base["val"])
    assert more_test["test"] != base["test"]


def test_a_folder_dataset_is_a_local_source_whose_digest_follows_its_files(tiny, tmp_path):
    root = make_folder(tmp_path / "cells", count=12)
    config = tiny(folder_updates("cells"))  # relative: recorded as the absolute directory
    inputs = inputs_of(config)
    dataset = inputs["train"].dataset
    assert dataset.name == "folder:cells"
    assert dataset.source_type == "local"
    assert json.loads(dataset.source) == {"uri": root.resolve().as_uri()}
    assert mlflow.data.get_source(inputs["train"]).uri == root.resolve().as_uri()
    assert json.loads(dataset.profile)["num_rows"] == 10  # 12 images, seeded 10% / 10%

    base = digests(config)
    assert digests(tiny(folder_updates(root, workers=1, augment={"hflip": 0.5}))) == base
    assert digests(tiny(folder_updates(root, image_size=16)))["val"] != base["val"]
    # another seed draws other images into each split
    reseeded = deep_update(folder_updates(root), {"data": {"seed": 1}})
    assert set(digests(tiny(reseeded)).values()).isdisjoint(base.values())
    # splits.yaml decides the splits: moving one image changes both splits it touches
    opened = prepare(config).dataset
    names = {s: sorted(opened.split(s).names) for s in ("train", "val", "test")}
    moved = names["train"][0]
    splits = {s: [n for n in names[s] if n != moved] for s in names}
    splits["test"].append(moved)
    (root / "splits.yaml").write_text(yaml.safe_dump(splits))
    # prepare() reuses a dataset this process opened recently: read the edited folder afresh
    reopened = create_dataset("folder", seed=config.data.seed, **config.data.params)
    changed = {_context(i): i.dataset.digest for i in dataset_inputs(config, reopened)}
    assert changed["val"] == base["val"]
    assert changed["train"] != base["train"] and changed["test"] != base["test"]
    # the same files at another path are another source
    other = make_folder(tmp_path / "copy" / "cells", count=12)
    assert digests(tiny(folder_updates(other)))["val"] != base["val"]


def test_logged_inputs_are_listed_filterable_and_a_refusal_is_a_warning(
    tiny, tracking_uri, tmp_path, capsys
):
    client = connect(tracking_uri)
    experiment_id = get_or_create_experiment(client, "tests", tracking_uri)
    shapes = client.create_run(experiment_id).info.run_id
    log_dataset_inputs(client, shapes, list(inputs_of(tiny()).values()))
    make_folder(tmp_path / "cells", count=12)
    folder = client.create_run(experiment_id).info.run_id
    log_dataset_inputs(client, folder, list(inputs_of(tiny(folder_updates("cells"))).values()))
    log_dataset_inputs(client, folder, list(inputs_of(tiny(folder_updates("cells"))).values()))

    listed = client.get_run(folder).inputs.dataset_inputs
    assert sorted(_context(i) for i in listed) == ["test", "train", "val"]  # logged twice, once
    assert {i.dataset.name for i in listed} == {"folder:cells"}

    def found(filter_string: str) -> set[str]:
        return {r.info.run_id for r in client.search_runs([experiment_id], filter_string)}

    assert found("datasets.name = 'shapes'") == {shapes}
    assert found("datasets.name = 'folder:cells' AND datasets.context = 'test'") == {folder}
    assert found("datasets.context = 'val'") == {shapes, folder}
    val_digest = next(i.dataset.digest for i in listed if _context(i) == "val")
    assert found(f"datasets.digest = '{val_digest}'") == {folder}
    mlflow.set_tracking_uri(tracking_uri)
    frame = mlflow.search_runs([experiment_id], filter_string="datasets.name = 'shapes'")
    assert list(frame["run_id"]) == [shapes]

    refused = client.create_run(experiment_id).info.run_id
    client.delete_run(refused)  # the store takes no inputs for it: training would go on
    log_dataset_inputs(client, refused, list(inputs_of(tiny()).values()))
    assert "warning: the run's datasets were not logged" in capsys.readouterr().err
    assert client.get_run(refused).inputs.dataset_inputs == []


@pytest.mark.slow
def test_a_tracked_run_lists_its_datasets_and_a_resume_keeps_them(tiny, tracking_uri):
    config = tiny({"train": {"epochs": 1}, "tracking": {"attention_plots": False}})
    first = run_experiment(config, tracking_uri=tracking_uri, progress=False)
    client = MlflowClient(tracking_uri)
    listed = client.get_run(first.run_id).inputs.dataset_inputs
    assert {_context(i): i.dataset.digest for i in listed} == digests(config)
    assert {i.dataset.name for i in listed} == {"shapes"}

    more = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 2})})
    resumed = run_experiment(more, tracking_uri=tracking_uri, resume=first.run_id, progress=False)
    assert resumed.run_id == first.run_id and resumed.status == "FINISHED"
    again = client.get_run(first.run_id).inputs.dataset_inputs
    assert sorted((_context(i), i.dataset.digest) for i in again) == sorted(
        (_context(i), i.dataset.digest) for i in listed
    )
