"""YAML and dotted keys, before any schema."""

import pytest

from latentseg.errors import ConfigError
from latentseg.yamlio import flatten, key_lines, parse_override, read_yaml_mapping, set_dotted


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(
        ConfigError,
        match=r"x.yaml:3: YAML syntax error: duplicate key 'epochs' \(first on line 2\)",
    ):
        read_yaml_mapping(path)


def test_dotted_keys_set_read_and_locate_nested_values():
    tree: dict = {"optim": {"lr": 0.1}}
    set_dotted(tree, "train.epochs", 3, source="--set")
    assert flatten(tree) == {"optim.lr": 0.1, "train.epochs": 3}
    with pytest.raises(ConfigError, match="'optim.lr' is not a section"):
        set_dotted(tree, "optim.lr.x", 1, source="--set")
    assert parse_override("optim.lr=0.5") == ("optim.lr", 0.5)
    assert key_lines("optim:\n  lr: 1\n") == {("optim",): 1, ("optim", "lr"): 2}
