"""Dataset plugins: the README's plugin installed with pip and trained, ``module:callable``
references, name clashes and broken plugins."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
from mlflow.tracking import MlflowClient

from latentseg.data import DATASETS, create_dataset
from latentseg.errors import ConfigError, RegistryError
from latentseg.registry import Registry
from latentseg.testing import DatasetConformance
from tests.conftest import ROOT, subprocess_env

README = (ROOT / "docs" / "plugins.md").read_text()


def readme_plugin() -> str:
    """The plugin module exactly as the README shows it."""
    block = README.split("# stripes_plugin.py\n", 1)[1].split("```", 1)[0]
    return block


def write_plugin_package(directory, entry_name="stripes", module_code=None):
    directory.mkdir(parents=True)
    (directory / "stripes_plugin.py").write_text(module_code or readme_plugin())
    (directory / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "stripes-plugin-{entry_name}"
            version = "0.1.0"

            [tool.setuptools]
            py-modules = ["stripes_plugin"]

            [project.entry-points."latentseg.datasets"]
            {entry_name} = "stripes_plugin:stripes"
            """
        )
    )
    return directory


def pip_install(package, target):
    done = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-index", "--target", str(target), str(package),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def cli(args, target, cwd):
    env = subprocess_env()
    env["PYTHONPATH"] = f"{target}:{env['PYTHONPATH']}"
    return subprocess.run(
        [sys.executable, "-m", "latentseg.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_the_readme_plugin_installed_by_pip_lists_and_trains(tmp_path, tiny_yaml, tracking_uri):
    target = tmp_path / "site"
    pip_install(write_plugin_package(tmp_path / "plugin"), target)
    listed = cli(["datasets", "--json"], target, tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["stripes"]["classes"] == ["background", "stripe"]
    assert "stripes-plugin-stripes" in rows["stripes"]["origin"]  # the installed package
    assert "shapes" in rows  # the built-ins are still there
    table = cli(["datasets"], target, tmp_path)
    assert "stripes" in table.stdout and "plugin" in table.stdout
    path = tiny_yaml(
        {
            "data": {"dataset": "stripes", "train_size": 64, "val_size": 16, "test_size": 16},
            "train": {"epochs": 1},
        }
    )
    trained = cli(
        ["train", str(path), "--tracking-uri", tracking_uri, "--no-progress"], target, tmp_path
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["latentseg.dataset"] == "stripes"
    assert run.data.params["model.in_channels"] == "1" and "val_iou_stripe" in run.data.metrics
    checked = cli(["datasets", "check", "stripes", "--param", "image_size=16"], target, tmp_path)
    assert checked.returncode == 0 and "stripe" in checked.stdout, checked.stdout + checked.stderr


@pytest.mark.slow
def test_a_module_callable_reference_trains_without_packaging(tmp_path, monkeypatch, tiny):
    (tmp_path / "stripes_plugin.py").write_text(readme_plugin())
    monkeypatch.syspath_prepend(str(tmp_path))
    from latentseg.tracking.run import run_experiment

    config = tiny(
        {
            "data": {
                "dataset": "stripes_plugin:stripes",
                "train_size": 32,
                "val_size": 8,
                "test_size": 8,
            },
            "train": {"epochs": 1},
            "tracking": {"enabled": False},
        }
    )
    result = run_experiment(config, progress=False)
    assert result.status == "FINISHED" and 0 <= result.summary["best_val_miou"] <= 1


class TestReadmePluginConformance(DatasetConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, tmp_path_factory):
        directory = tmp_path_factory.mktemp("plugin")
        (directory / "stripes_plugin.py").write_text(readme_plugin())
        sys.path.insert(0, str(directory))
        try:
            yield cls().make_dataset()
        finally:
            sys.path.remove(str(directory))

    def make_dataset(self):
        return create_dataset(
            "stripes_plugin:stripes", split_sizes={"train": 32, "val": 8, "test": 8}
        )


@pytest.mark.parametrize(
    "reference,message",
    [
        ("no_such_module_x:build", "cannot import module 'no_such_module_x'"),
        ("json:no_such_builder", "module 'json' has no 'no_such_builder'"),
        ("json:__doc__", "is not callable"),
        (":build", "expected 'module:callable'"),
    ],
)
def test_bad_module_references_are_config_errors(reference, message):
    with pytest.raises(ConfigError, match=message):
        create_dataset(reference)


def test_a_plugin_rejecting_its_params_is_a_config_error(tmp_path, monkeypatch):
    (tmp_path / "stripes_plugin.py").write_text(readme_plugin())
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="does not accept data.params"):
        create_dataset("stripes_plugin:stripes", colour="red")


def fake_distribution(site, name, entry_points: dict[str, str]):
    """An installed distribution as importlib.metadata sees it: a dist-info with entry points."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[latentseg.datasets]\n{lines}\n")


def fresh_registry() -> Registry:
    """A dataset registry with the built-ins, loading plugins from the current sys.path."""
    registry = Registry("dataset", entry_point_group="latentseg.datasets")
    for name in DATASETS._entries:  # the built-ins, without the plugins of this process
        if DATASETS._origins[name] == "built-in":
            registry.register(DATASETS._entries[name], name=name)
    return registry


def test_a_plugin_named_like_a_builtin_raises_naming_both(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "clashing", {"shapes": "json:loads"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RegistryError) as err:
        fresh_registry().names()
    assert "'shapes'" in str(err.value) and "json:loads" in str(err.value)
    assert "built-in" in str(err.value) and "clashing" in str(err.value)


def test_a_plugin_that_fails_to_import_warns_and_the_others_still_list(tmp_path, monkeypatch):
    (tmp_path / "good_dataset_plugin.py").write_text(readme_plugin())
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('missing dependency foo')\n")
    fake_distribution(tmp_path, "good", {"stripes": "good_dataset_plugin:stripes"})
    fake_distribution(tmp_path, "broken", {"broken": "broken_plugin:build"})
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = fresh_registry()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = registry.names()
    assert "stripes" in names and "broken" not in names and "shapes" in names
    assert any("missing dependency foo" in str(w.message) for w in caught)
