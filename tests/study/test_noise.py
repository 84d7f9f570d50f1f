"""``latentseg noise``: each source of a configuration's noise varied alone, the estimator
checked by simulation, bad requests refused with one line."""

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from latentseg.cli import main
from latentseg.report.sources import findings, source_table
from tests.data.folders import folder_config, make_folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--sources", "weights,luck"],
            "--sources 'weights,luck': luck is not a source; choose from weights, order, data, all",
        ),
        (["--levels", "1"], "--levels must be between 2 and 100, got 1"),
        (["--versus", "model.latents=8"], "--versus model.latents: not a config key"),
        (
            ["--versus", "model.num_latents=16"],
            "--versus model.num_latents=16: the configuration already has model.num_latents=16",
        ),
        (["--versus", "train.seed=3"], "--versus train.seed=3: train.seed is not a variant"),
        (["--versus", "model.num_latents=-2"], "num_latents"),
        (
            ["--set", "train.init_seed=4", "--sources", "order"],
            "train.init_seed is pinned (4): latentseg noise sets it per source",
        ),
        (
            ["--set", "train.order_seed=4", "--sources", "all"],
            "train.order_seed is pinned (4): latentseg noise sets it per source",
        ),
        (["--versus", "data.seed=5"], "--versus data.seed=5: data.seed is not a variant"),
        (
            ["--set", "model.expert_attention=false", "--versus", "model.num_latents=8"],
            "num_latents changes nothing in this model",
        ),
        (
            ["--set", "data.dataset=nosuch"],  # blamed on the flag, not on "the default"
            "Unknown dataset 'nosuch'. Did you mean 'noise'? Available: digits, folder, noise, "
            "oxford-pet, shapes, voc. (data.dataset from --set data.dataset=nosuch)",
        ),
    ],
    ids=[
        "source",
        "levels",
        "key",
        "same",
        "seed",
        "value",
        "pinned-weights",
        "pinned-order",
        "data-seed",
        "inert",
        "dataset",
    ],  # fmt: skip
)
def test_a_bad_request_exits_2_with_one_line_and_runs_nothing(
    args, message, tiny_yaml, tmp_path, capsys
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(
        ["noise", str(tiny_yaml()), "--tracking-uri", uri, "-o", str(tmp_path / "out"), *args]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()


def test_the_data_source_of_a_dataset_whose_seed_changes_nothing_is_refused(
    tiny_yaml, tmp_path, capsys
):
    root = make_folder(tmp_path / "data", count=12)
    stems = [f"img{i:03d}" for i in range(12)]
    (root / "splits.yaml").write_text(
        yaml.safe_dump({"train": stems[:8], "val": stems[8:10], "test": stems[10:]})
    )
    path = tiny_yaml(folder_config(root))
    code = main(["noise", str(path), "--sources", "data", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert (
        "data.seed changes nothing in dataset 'folder'" in err
        and "leave data out of --sources" in err
    )


@pytest.mark.parametrize("paired", [False, True], ids=["score", "paired difference"])
def test_planted_source_variances_are_recovered_one_factor_at_a_time(paired):
    # a run's value (its score, or a paired difference, which carries part of each source's
    # effect) = base + gain * (w + o + d) + e: varying one source over its levels with the
    # others held gives gain**2 times its variance, plus that of e (a run's own, small)
    rng = np.random.default_rng(11)
    planted = {"weights": 0.012, "order": 0.006, "data": 0.009}
    gain, base = (0.5, 0.02) if paired else (1.0, 0.6)
    levels, replicates, own = 8, 400, 0.001
    estimates = {s: [] for s in [*planted, "all"]}
    for _ in range(replicates):
        held = {s: rng.normal(0, sd) for s, sd in planted.items()}
        measured = {}
        for source, sd in planted.items():
            others = sum(v for s, v in held.items() if s != source)
            varied = rng.normal(0, sd, levels)
            measured[source] = base + gain * (varied + others) + rng.normal(0, own, levels)
        together = rng.normal(0, planted["weights"], levels) + rng.normal(
            0, planted["order"], levels
        )
        measured["all"] = base + gain * (together + held["data"]) + rng.normal(0, own, levels)
        table = source_table(measured, test=None).set_index("source")
        for source in estimates:
            estimates[source].append(table.loc[source, "variance"])
    truths = {s: gain**2 * sd**2 + own**2 for s, sd in planted.items()}
    truths["all"] = gain**2 * (planted["weights"] ** 2 + planted["order"] ** 2) + own**2
    for source, truth in truths.items():
        values = np.array(estimates[source])
        error = values.std(ddof=1) / math.sqrt(replicates)
        assert abs(values.mean() - truth) < 4 * error, (source, values.mean(), truth)
    assert table.loc["weights", "of_seed_variance"] == pytest.approx(
        table.loc["weights", "variance"] / table.loc["all", "variance"]
    )
    lines = findings(source_table(measured, test=(1e-5, 4e-6, 256)))
    assert any(
        line.startswith("The largest training source alone is initial weights") for line in lines
    )
    assert lines[-1].startswith("The finite test set alone: SD 0.0032 per level")
    assert "SD 0.0020 of it every level shares" in lines[-1]
    test_row = source_table(measured, test=(1e-5, 4e-6, 256)).set_index("source").loc["test"]
    assert test_row["of_seed_variance"] == pytest.approx(6e-6 / table.loc["all", "variance"])


@pytest.mark.slow
def test_noise_splits_a_paired_difference_by_source_and_resumes(tiny_yaml, tmp_path, capsys):
    path = tiny_yaml({"train": {"epochs": 2}, "optim": {"lr": 0.01}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    args = ["noise", str(path), "--versus", "model.num_latents=8", "--sources", "data,all",
            "--levels", "2", "--name", "nz", "--tracking-uri", uri, "-o", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "noise.csv").set_index("source")
    assert list(table.index) == ["data", "all", "test"]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("nz").experiment_id
    runs = client.search_runs([experiment], filter_string="tags.`latentseg.run_type` = 'seed'")
    by_study: dict[str, list] = {}
    for run in runs:
        by_study.setdefault(run.data.tags["latentseg.study"], []).append(run)
    assert {k: len(v) for k, v in by_study.items()} == {"nz-data": 4, "nz-all": 4}
    data = by_study["nz-data"]  # the data seed varies, the training seed does not
    assert {r.data.params["data.seed"] for r in data} == {"0", "1"}
    assert {r.data.params["train.seed"] for r in data} == {"7"}
    for source, level in (("data", "data.seed"), ("all", "train.seed")):
        values = {}
        for run in by_study[f"nz-{source}"]:
            side = run.data.params["model.num_latents"]
            values.setdefault(run.data.params[level], {})[side] = run.data.metrics["test_miou"]
        diffs = [v["8"] - v["16"] for v in values.values()]  # paired on the level
        assert table.loc[source, "sd"] == pytest.approx(np.std(diffs, ddof=1), abs=1e-12)
        assert table.loc[source, "mean"] == pytest.approx(np.mean(diffs), abs=1e-12)
    assert table.loc["test", "sd"] >= 0 and "16 images" in table.loc["test", "varies"]
    assert "model.num_latents=8 minus model.num_latents=16 (paired)" in printed
    assert (out / "noise.md").read_text().startswith("# Where the noise comes from: nz")
    # again: every study resumes with nothing left to run, and the table is the same
    assert main(args) == 0
    again = client.search_runs([experiment], filter_string="tags.`latentseg.run_type` = 'seed'")
    assert len(again) == len(runs)
    assert pd.read_csv(out / "noise.csv").equals(table.reset_index())


def test_each_sources_study_varies_that_source_alone_against_resolved_values(tiny_yaml, tmp_path):
    from latentseg.study.noise import noise_design, parse_sources

    sources = parse_sources("weights, order,data,all,weights")
    assert sources == ["weights", "order", "data", "all"]
    design = noise_design(
        tiny_yaml(), ["data.train_size=32"], "model.num_latents=8", sources, 3, None, tmp_path
    )
    # the baseline is the value runs log (the variant's default, resolved), not the YAML's null
    assert (design.name, design.axis, design.baseline, design.variant) == (
        "tiny-noise", "model.num_latents", 16, 8,
    )  # fmt: skip
    specs = {s: yaml.safe_load(p.read_text()) for s, p in design.specs.items()}
    for source, spec in specs.items():
        assert spec["name"] == f"tiny-noise-{source}" and spec["mlflow_experiment"] == "tiny-noise"
        assert spec["search_space"]["model.num_latents"] == [16, 8]
        assert spec["overrides"]["data.train_size"] == 32  # the user's --set, kept
    assert specs["weights"]["overrides"]["train.order_seed"] == 7 and specs["weights"]["seeds"] == 3
    assert specs["order"]["overrides"]["train.init_seed"] == 7 and specs["order"]["seeds"] == 3
    assert specs["data"]["search_space"]["data.seed"] == [0, 1, 2] and specs["data"]["seeds"] == [7]
    assert "train.init_seed" not in specs["all"]["overrides"] and specs["all"]["seeds"] == 3
    assert "train.order_seed" not in specs["all"]["overrides"]
