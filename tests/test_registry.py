import sys
import textwrap

import pytest

from latentseg.errors import RegistryError
from latentseg.registry import Registry


def test_register_get_and_list_with_wildcards():
    reg = Registry("widget")

    @reg.register
    def small_one():
        return 1

    @reg.register(name="big")
    def whatever():
        return 2

    assert reg.get("small-one")() == 1  # function name is the key, '_' -> '-'
    assert reg.get("big")() == 2
    assert reg.names() == ["big", "small-one"]
    assert reg.names("small*") == ["small-one"]


def test_duplicate_name_raises_naming_it():
    reg = Registry("widget")
    reg.register(lambda: 1, name="a")
    with pytest.raises(RegistryError, match="already registered under the name 'a'"):
        reg.register(lambda: 2, name="a")
    assert reg.get("a")() == 1  # the first one is kept


def test_unknown_name_suggests_close_matches_and_lists_all():
    reg = Registry("model")
    for name in ("latents-4", "latents-8", "seed"):
        reg.register(lambda: None, name=name)
    with pytest.raises(RegistryError) as info:
        reg.get("latent-4")
    message = str(info.value)
    assert "Did you mean 'latents-4'" in message
    assert "Available: latents-4, latents-8, seed" in message


def _install_plugin(
    tmp_path, monkeypatch, group: str, entries: dict[str, str], modules: dict[str, str]
):
    """A real installed distribution (dist-info with entry_points.txt) on sys.path."""
    site = tmp_path / "site"
    dist = site / "fake_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (dist / "entry_points.txt").write_text(f"[{group}]\n{lines}\n")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(site))
    for name in modules:
        sys.modules.pop(name, None)


def test_entry_point_plugins_load_and_broken_ones_warn(tmp_path, monkeypatch):
    _install_plugin(
        tmp_path,
        monkeypatch,
        "test.widgets",
        {"good": "good_plugin:build", "broken": "broken_plugin:build"},
        {
            "good_plugin": "def build():\n    return 'good'\n",
            "broken_plugin": "raise ImportError('missing dependency xyz')\n",
        },
    )
    reg = Registry("widget", entry_point_group="test.widgets")
    with pytest.warns(RuntimeWarning, match="broken.*missing dependency xyz"):
        names = reg.names()
    assert names == ["good"]
    assert reg.get("good")() == "good"
    assert "plugin" in reg.origin("good")


def test_plugin_name_clash_with_builtin_raises_naming_both(tmp_path, monkeypatch):
    _install_plugin(
        tmp_path,
        monkeypatch,
        "test.clash",
        {"seed": "clash_plugin:build"},
        {"clash_plugin": "def build():\n    return 1\n"},
    )
    reg = Registry("model", entry_point_group="test.clash")
    reg.register(lambda: 0, name="seed")
    with pytest.raises(RegistryError, match=r"uses the name 'seed'.*already taken by built-in"):
        reg.names()


def test_the_model_registry_builds_a_variants_config_and_names_a_bad_key():
    """latentseg.models.registry: the registry the built-in variants register into, the same
    one the package's create_model reads; a variant's defaults with a user's overrides are
    validated, and a bad override is named by its key."""
    from latentseg import models
    from latentseg.errors import ConfigError
    from latentseg.models.registry import MODELS, build_config

    assert models.MODELS is MODELS and "tutorial" in MODELS.names()
    config = build_config({"num_latents": 4}, {"num_heads": 2})
    assert (config.num_latents, config.num_heads) == (4, 2)
    with pytest.raises(ConfigError, match="model.num_latents"):
        build_config({"num_latents": 4}, {"num_latents": "many"})


def test_the_version_is_the_projects_and_the_facade_shows_it():
    import re
    from pathlib import Path

    import latentseg
    from latentseg._version import __version__

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'\nversion = "{__version__}"\n' in pyproject, re.findall(r"\nversion = .*", pyproject)
    assert latentseg.__version__ == __version__
