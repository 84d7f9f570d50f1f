"""Common random numbers between variants: each module's initial weights from its own stream."""

import pytest
import torch
from torch import nn

from latentseg.errors import ConfigError
from latentseg.models import (
    MODELS,
    LatentSegModel,
    build_config,
    create_model,
    list_models,
    register_model,
)
from latentseg.models.init import seed_weights, stream_seed, undrawn
from latentseg.train import Trainer, prepare

# One module added, replaced or repeated against the tutorial.
ONE_MODULE_APART = [
    {"position_encoding": "learned"},
    {"position_encoding": "fourier"},
    {"latent_depth": 1},
    {"latent_depth": 2},
    {"latent_depth": 1, "moe_experts": 4, "moe_top_k": 2, "moe_shared": 1},
    {"cross_attend_passes": 2},
    {"kv_rank": 8},
    {"pixel_residual": True},
    {"num_heads": 2},
    {"decoder": "attention+skip", "output": "full"},
    {"expert_attention": False},
    {"num_latents": 8},
]


def _ids(overrides):
    return ",".join(f"{k}={v}" for k, v in overrides.items())


@pytest.mark.parametrize("overrides", ONE_MODULE_APART, ids=_ids)
def test_variants_one_module_apart_share_every_other_initial_weight_bit_for_bit(overrides):
    base = create_model("tutorial", seed=11).state_dict()
    variant = create_model("tutorial", seed=11, **overrides).state_dict()
    shared = [k for k in variant if k in base and variant[k].shape == base[k].shape]
    assert {"encoder.conv1.weight", "expert_segmentation.segmentation_head.weight"} <= set(shared)
    for key in shared:
        assert torch.equal(variant[key], base[key]), key
    # the weights that differ are drawn from the seed too: another seed changes them
    other = create_model("tutorial", seed=12, **overrides).state_dict()
    for key in set(variant) - set(shared):
        if variant[key].std() > 0:
            assert not torch.equal(other[key], variant[key]), key


@pytest.mark.parametrize("overrides", [{"num_latents": 8}, {"kv_rank": 8}], ids=_ids)
def test_one_global_stream_shifts_the_weights_built_after_a_change_and_module_streams_do_not(
    overrides,
):
    # what the per-module streams fix: under init="global", fewer latents (or MLA's
    # down-projection) shift the draws of every module built after them
    def moved(init):
        base = create_model("tutorial", seed=11, init=init).state_dict()
        variant = create_model("tutorial", seed=11, init=init, **overrides).state_dict()
        shared = [k for k in base if k in variant and base[k].shape == variant[k].shape]
        return [k for k in shared if not torch.equal(base[k], variant[k])]

    assert "expert_segmentation.segmentation_head.weight" in moved("global")
    assert moved("modules") == []


@pytest.mark.parametrize("variant", list_models())
def test_every_initial_weight_of_every_variant_comes_from_its_modules_stream(variant):
    model = create_model(variant, seed=3)
    assert undrawn(model) == []
    # built from two other draws of the global stream, then redrawn by module: the same
    # weights, so no tensor keeps its constructor's draw (one a reset method forgot would)
    first, second = (create_model(variant, seed=s, init="global") for s in (100, 101))
    seed_weights(first, 3)
    seed_weights(second, 3)
    for key, value in model.state_dict().items():
        assert torch.equal(first.state_dict()[key], value), key
        assert torch.equal(second.state_dict()[key], value), key


@pytest.mark.parametrize(
    "overrides",
    [{}, {"encoder": "deep", "output": "full"}, ONE_MODULE_APART[4], {"kv_rank": 8}],
    ids=_ids,
)
def test_per_module_streams_draw_each_weight_from_its_modules_own_distribution(overrides):
    # the same distribution as the constructor's draws: constants stay the same constants,
    # random tensors keep their range and spread (uniform bounds, normal scales)
    global_draw = create_model("tutorial", seed=4, init="global", **overrides).state_dict()
    for seed in (4, 5):
        modules = create_model("tutorial", seed=seed, **overrides).state_dict()
        assert list(modules) == list(global_draw)
        for key, ours in modules.items():
            theirs = global_draw[key]
            if theirs.dtype.is_floating_point and theirs.numel() >= 64 and theirs.std() > 0:
                assert not torch.equal(ours, theirs), key
                ratio = (ours.float().std() / theirs.float().std()).item()
                assert 0.75 < ratio < 1.33, (key, ratio)
                bound = theirs.abs().max().item()
                assert ours.abs().max().item() <= bound * 1.5, key
            elif theirs.numel() and (theirs == theirs.flatten()[0]).all():
                assert torch.equal(ours, theirs), key  # zeros, ones, counters


def test_create_model_with_a_seed_is_what_a_run_with_that_seed_starts_from(tiny, tmp_path):
    overrides = {"position_encoding": "learned", "num_latents": 4}
    for init in ("modules", "global"):
        config = tiny(
            {"model": {"variant": "tutorial", **overrides}, "train": {"seed": 9, "init": init}}
        )
        prepared = prepare(config)
        started = Trainer(prepared, tmp_path / init).model.state_dict()
        # the run's overrides: the spec's and the dataset's (classes, channels)
        assert overrides.items() <= prepared.overrides.items()
        built = create_model("tutorial", seed=9, init=init, **prepared.overrides).state_dict()
        assert list(started) == list(built)
        for key, value in built.items():
            assert torch.equal(started[key].cpu(), value), (init, key)


def test_a_seeded_build_leaves_the_global_stream_alone_and_global_init_is_the_tutorials():
    torch.manual_seed(42)
    expected = create_model("tutorial").state_dict()
    before = torch.random.get_rng_state()
    seeded = create_model("tutorial", seed=42, init="global").state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    for key, value in expected.items():
        assert torch.equal(seeded[key], value), key
    create_model("tutorial", seed=42)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_an_unknown_init_is_refused_by_name():
    with pytest.raises(ConfigError, match="init: 'layers' is not one of modules, global"):
        create_model("tutorial", seed=1, init="layers")
    from latentseg.config import TrainConfig

    with pytest.raises(Exception, match="init"):
        TrainConfig(init="layers")


class _Plain(nn.Module):  # a plugin's layer with its own weights and no reset_parameters
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(8))


def test_a_plugins_layer_without_reset_parameters_is_named_and_stays_seeded():
    model = create_model("tutorial", seed=2)
    model.extra = _Plain()
    model.head_of_extra = nn.Linear(2, 2)
    assert undrawn(model) == ["extra.scale"]
    assert stream_seed(2, "a") != stream_seed(2, "b") != stream_seed(3, "a")
    before = model.extra.scale.detach().clone()
    seed_weights(model, 2)
    assert torch.equal(model.extra.scale, before)  # left to the seeded global stream


def test_a_registered_variant_with_a_custom_layer_is_seeded_by_the_run():
    name = "test-init-plain"

    def builder(**overrides):
        model = LatentSegModel(build_config({}, overrides))
        model.extra = _Plain()
        return model

    register_model(builder, name=name)
    try:
        a = create_model(name, seed=6).state_dict()
        torch.manual_seed(0)
        b = create_model(name, seed=6).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)  # the seed draws it, not the caller
        c = create_model(name, seed=7).state_dict()
        assert not torch.equal(a["extra.scale"], c["extra.scale"])
    finally:
        MODELS.unregister(name)


def test_the_tutorial_experiment_starts_from_the_tutorials_own_weights(tmp_path):
    from latentseg.loading import load_experiment
    from tests.conftest import ROOT
    from tests.models.tutorial_reference import SegmentationModel

    config = load_experiment(ROOT / "experiments" / "tutorial.yaml")
    assert config.train.init == "global"
    started = Trainer(prepare(config), tmp_path).model.state_dict()
    torch.manual_seed(42)
    theirs = SegmentationModel().state_dict()
    assert list(started) == list(theirs)
    for key, value in theirs.items():
        assert torch.equal(started[key].cpu(), value), key
