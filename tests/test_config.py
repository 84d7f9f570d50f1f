import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from latentseg.config import ExperimentConfig, ModelConfig, parse_override
from latentseg.errors import ConfigError
from latentseg.loading import load_experiment, load_experiment_sourced
from latentseg.train import prepare


def write(tmp_path, text: str, name: str = "exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_experiments_load_and_resolve():
    from tests.conftest import ROOT

    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        config = load_experiment(path)
        prepared = prepare(config, str(path))
        assert prepared.model_config.num_classes == prepared.dataset.info.num_classes


def test_misspelt_key_names_file_line_key_and_suggestion(tmp_path):
    path = write(tmp_path, "model:\n  variant: tutorial\noptim:\n  lr: 0.01\n  weight_decai: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    message = str(info.value)
    assert f"{path}:5" in message
    assert "optim.weight_decai" in message
    assert "Did you mean 'weight_decay'" in message


def test_wrong_type_and_out_of_range_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochs: .*integer.*'many'"):
        load_experiment(write(tmp_path, "train:\n  epochs: many\n"))
    with pytest.raises(ConfigError, match=r"optim\.lr: .*greater than 0"):
        load_experiment(write(tmp_path, "optim:\n  lr: -1\n"))


def test_heads_must_divide_latent_dim_and_the_error_lists_allowed_heads(tmp_path):
    config = load_experiment(write(tmp_path, "model:\n  latent_dim: 60\n  num_heads: 8\n"))
    with pytest.raises(
        ConfigError,
        match=r"latent_dim \(60\) must be divisible by num_heads \(8\).*\[1, 2, 3, 4, 5, 6",
    ):
        prepare(config, "exp.yaml")
    with pytest.raises(ValidationError):
        ModelConfig(latent_dim=60, num_heads=8)


def test_yaml_syntax_error_and_empty_file(tmp_path):
    with pytest.raises(
        ConfigError, match=r"exp.yaml:3: YAML syntax error: mapping values are not allowed"
    ):
        load_experiment(write(tmp_path, "train:\n  epochs: 3\n   seed: 4\n"))
    with pytest.raises(ConfigError, match="empty"):
        load_experiment(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="mapping"):
        load_experiment(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "missing.yaml")


def test_yaml_is_read_safely(tmp_path):
    with pytest.raises(ConfigError, match="YAML"):
        load_experiment(write(tmp_path, "model: !!python/object/apply:os.system ['echo hi']\n"))


def test_dotted_overrides_parse_values_as_yaml_and_validate(tmp_path):
    path = write(tmp_path, "model:\n  variant: tutorial\n")
    config = load_experiment(
        path,
        [
            "model.num_latents=8",
            "optim.lr=3e-4",
            "model.expert_attention=false",
            "data.params.image_size=32",
        ],
    )
    assert config.model.num_latents == 8
    assert config.optim.lr == pytest.approx(3e-4)
    assert config.model.expert_attention is False
    assert config.data.params == {"image_size": 32}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="model.num_latnts.*Did you mean 'num_latents'"):
        load_experiment(path, ["model.num_latnts=8"])


def test_configs_are_frozen():
    config = ExperimentConfig()
    with pytest.raises(ValidationError):
        config.optim.lr = 1.0  # type: ignore[misc]


def test_model_axes_from_dataset_and_conflicts(tmp_path):
    config = load_experiment(
        write(tmp_path, "data:\n  dataset: shapes\n  params: {shapes: [circle]}\n")
    )
    assert prepare(config).model_config.num_classes == 2
    config = load_experiment(
        write(tmp_path, "model:\n  num_classes: 5\ndata:\n  dataset: shapes\n")
    )
    with pytest.raises(ConfigError, match="model.num_classes is 5 but data.dataset 'shapes' has 4"):
        prepare(config, "exp.yaml")


def test_unknown_variant_and_dataset_and_dataset_params(tmp_path):
    with pytest.raises(Exception, match="Unknown model 'tutrial'. Did you mean 'tutorial'"):
        prepare(load_experiment(write(tmp_path, "model:\n  variant: tutrial\n")))
    with pytest.raises(Exception, match="Unknown dataset 'shape'. Did you mean 'shapes'"):
        prepare(load_experiment(write(tmp_path, "data:\n  dataset: shape\n")))
    with pytest.raises(ConfigError, match=r"data\.params\.image_sise.*Did you mean 'image_size'"):
        prepare(load_experiment(write(tmp_path, "data:\n  params: {image_sise: 32}\n")))


def test_config_hash_ignores_tracking_but_not_hyperparameters():
    base = ExperimentConfig()
    assert base.config_hash() == base.with_updates({"tracking.experiment": "other"}).config_hash()
    assert base.config_hash() != base.with_updates({"optim.lr": 0.5}).config_hash()


def test_a_run_of_the_weights_before_train_init_keeps_its_hash_and_the_new_weights_do_not():
    import hashlib
    import json

    config = ExperimentConfig().with_updates({"train.init": "global"})
    payload = config.model_dump(mode="json", exclude={"tracking"})
    for key in ("device", "threads", "init", "init_seed", "order_seed"):  # keys since added
        payload["train"].pop(key)
    before = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
    assert config.config_hash() == before  # a study started before resumes with init=global
    modules = config.with_updates({"train.init": "modules"})
    assert modules.config_hash() != before  # other weights: not the same configuration
    assert modules.with_updates({"train.init_seed": 3}).config_hash() != modules.config_hash()


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=True), st.text(max_size=8)
)
keys = st.sampled_from(
    [
        "model",
        "data",
        "optim",
        "train",
        "tracking",
        "lr",
        "epochs",
        "variant",
        "num_heads",
        "params",
        "batch_size",
        "x",
    ]
)
trees = st.recursive(
    scalars,
    lambda children: st.dictionaries(keys, children, max_size=4) | st.lists(children, max_size=3),
    max_leaves=12,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(keys, trees, max_size=5))
def test_random_yaml_mappings_either_load_or_raise_config_error(tmp_path, data):
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        config = load_experiment(path)
    except ConfigError:
        return
    # what loaded is whole: written back as YAML it loads as the same config, same hash
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    again = load_experiment(path)
    assert again == config and again.config_hash() == config.config_hash()


CROSS = """\
model:
  variant: tutorial
  latent_dim: 30
  num_heads: 4
data:
  dataset: shapes
  batch_size: 8
  train_size: 32
"""


def cross_field_error(path, *flags: str) -> str:
    config, origin = load_experiment_sourced(path, flags)
    with pytest.raises(ConfigError) as info:
        prepare(config, origin)
    return str(info.value)


def test_a_cross_field_error_names_each_key_and_where_its_value_came_from(tmp_path):
    """Issue 15, item 8: values from the YAML are cited by file and line, never blamed on a
    --set that had nothing to do with them; a flag that set one of the keys is cited."""
    path = write(tmp_path, CROSS)
    unrelated = cross_field_error(path, "train.epochs=3", "optim.lr=0.1")
    assert unrelated == (
        f"{path}: model: latent_dim (30) must be divisible by num_heads (4); allowed num_heads "
        f"for latent_dim 30: [1, 2, 3, 5, 6, 10, 15, 30] (model.latent_dim from {path}:3; "
        f"model.num_heads from {path}:4)"
    )
    assert "--set" not in unrelated
    flagged = cross_field_error(path, "train.epochs=3", "model.num_heads=7")
    assert flagged.endswith(
        f"(model.latent_dim from {path}:3; model.num_heads from --set model.num_heads=7)"
    )
    assert "train.epochs" not in flagged


def test_keys_across_sections_and_defaults_are_cited(tmp_path):
    path = write(tmp_path, CROSS.replace("latent_dim: 30", "latent_dim: 32"))
    batch = cross_field_error(path, "data.batch_size=64", "train.epochs=3")
    assert batch == (
        f"{path}: data.batch_size (64) is larger than the train split (32 samples; "
        f"data.train_size 32) (data.batch_size from --set data.batch_size=64; "
        f"data.train_size from {path}:8)"
    )
    classes = cross_field_error(path, "model.num_classes=3")
    assert classes.endswith(
        f"(model.num_classes from --set model.num_classes=3; data.dataset from {path}:6)"
    )
    # a key nobody set: its value is the variant's (or the config's) default
    heads = cross_field_error(write(tmp_path, "model:\n  latent_dim: 30\n", "d.yaml"))
    assert heads.endswith(
        f"(model.latent_dim from {tmp_path / 'd.yaml'}:2; model.num_heads from the variant's default)"
    )


def test_a_validation_error_names_the_file_line_and_key_and_the_closest_allowed_one():
    from pydantic import ValidationError

    from latentseg.config import StrictModel
    from latentseg.validation import format_validation_error

    class Options(StrictModel):
        learning_rate: float = 0.1

    with pytest.raises(ValidationError) as info:
        Options.model_validate({"lerning_rate": 0.2})
    said = format_validation_error(info.value, Options, "opts.yaml", {("lerning_rate",): 3})
    assert (
        said
        == "opts.yaml:3: unknown key 'lerning_rate'. Did you mean 'learning_rate'? Allowed here: learning_rate."
    )
