import pytest
import torch

from latentseg.config import ModelConfig
from latentseg.errors import ConfigError, RegistryError
from latentseg.models import count_flops, count_params, create_model, list_models
from tests.models.tutorial_reference import SegmentationModel

SEED_PARAMS = 70_466  # the tutorial's SegmentationModel(3, 64, 64, 16, 4, 2)


def test_tutorial_has_exactly_the_tutorials_parameter_count():
    assert count_params(create_model("tutorial")) == SEED_PARAMS
    assert count_params(SegmentationModel()) == SEED_PARAMS


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_tutorial_reproduces_the_tutorial_model_from_the_same_seed(impl):
    torch.manual_seed(42)
    tutorial = SegmentationModel()
    torch.manual_seed(42)
    ours = create_model("tutorial", attention_impl=impl)
    theirs = tutorial.state_dict()
    assert list(ours.state_dict()) == list(theirs)  # same keys, same order: weights interchange
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    images = torch.randn(2, 3, 128, 128)
    expected = tutorial(images)
    assert expected.shape == (2, 2, 32, 32)
    torch.testing.assert_close(ours(images), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"pixel_residual": True},
        {"num_heads": 1, "num_latents": 4},
        {"encoder": "deep", "output": "full"},
        {"position_encoding": "fourier"},
        {"position_encoding": "learned"},
        {"latent_depth": 2},
        {"latent_depth": 1, "cross_attend_passes": 3, "share_passes": True},
        {"cross_attend_passes": 2, "kv_rank": 8},
        {"kv_rank": 16, "pixel_residual": True},
        {"latent_depth": 1, "moe_experts": 4, "moe_top_k": 2, "moe_shared": 1},
        {"decoder": "attention+skip", "output": "full"},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "tutorial",
)
def test_fused_and_reference_agree_on_outputs_gradients_and_attention(overrides, device):
    torch.manual_seed(0)
    reference = create_model("tutorial", attention_impl="reference", **overrides).to(device)
    fused = create_model("tutorial", attention_impl="fused", **overrides).to(device)
    fused.load_state_dict(reference.state_dict())
    reference.eval()
    fused.eval()
    images = torch.randn(3, 3, 32, 32).to(device)
    out_r, maps_r = reference(images, return_attention=True)
    out_f, maps_f = fused(images, return_attention=True)
    torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(maps_f.latent_to_pixel, maps_r.latent_to_pixel, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps_f.pixel_to_latent, maps_r.pixel_to_latent, rtol=1e-5, atol=1e-6)
    # Training path (no weights materialised in the fused one): same outputs and gradients.
    target = torch.randint(0, 2, out_r.shape[:1] + out_r.shape[2:]).to(device)
    for model in (reference, fused):
        model.train()
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(images), target).backward()
    for (name, p_r), (_, p_f) in zip(
        reference.named_parameters(), fused.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p_f.grad, p_r.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", list_models())
def test_every_variant_trains_forward_and_backward_with_finite_values(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3)
    images = torch.randn(2, 3, 32, 32)
    logits = model(images)
    height, width = model.output_size(32, 32)
    assert logits.shape == (2, 3, height, width)
    loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (2, height, width)))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for p in model.parameters()
        if p.requires_grad
    )
    assert count_params(model) > 0 and count_flops(model.config, (32, 32)) > 0


@pytest.mark.parametrize("name", list_models())
def test_attention_maps_are_distributions_when_experts_exist(name):
    model = create_model(name).eval()
    with torch.no_grad():
        logits, maps = model(torch.randn(2, 3, 32, 32), return_attention=True)
    if not model.config.expert_attention:
        assert maps is None
        return
    heads, latents = model.config.num_heads, model.config.num_latents
    assert maps.latent_to_pixel.shape == (2, heads, latents, 64)
    assert maps.pixel_to_latent.shape == (2, heads, 64, latents)
    torch.testing.assert_close(maps.latent_to_pixel.sum(-1), torch.ones(2, heads, latents))
    torch.testing.assert_close(maps.pixel_to_latent.sum(-1), torch.ones(2, heads, 64))
    assert maps.latent_maps().shape == (2, latents, 8, 8)
    assert maps.assignment().shape == (2, 8, 8) and int(maps.assignment().max()) < latents


def test_without_expert_attention_no_latent_block_is_built():
    model = create_model("no-expert")
    names = [n for n, _ in model.named_parameters()]
    assert model.latent_attention is None and model.expert_segmentation.attention is None
    assert not any("latent" in n or "attention" in n for n in names)
    assert count_params(model) == SEED_PARAMS - (1024 + 3 * 4160 + 16640) - 16640


def test_output_modes_and_pixel_residual_change_the_model():
    images = torch.randn(1, 3, 64, 64)
    assert create_model("tutorial")(images).shape[-2:] == (16, 16)
    assert create_model("tutorial", output="full")(images).shape[-2:] == (64, 64)
    torch.manual_seed(1)
    plain = create_model("tutorial")
    torch.manual_seed(1)
    residual = create_model("residual")
    assert not torch.allclose(plain(images), residual(images))


def test_flops_grow_with_the_deep_encoder_and_the_image():
    seed = ModelConfig()
    deep = ModelConfig(encoder="deep")
    assert count_flops(deep) > 2 * count_flops(seed)
    assert count_flops(seed, (128, 128)) == pytest.approx(4 * count_flops(seed, (64, 64)), rel=0.05)


def test_registry_api():
    assert {"tutorial", "no-expert", "latents-4", "heads-1"} <= set(list_models())
    assert list_models("latents-*") == ["latents-32", "latents-4", "latents-8"]
    assert create_model("latents-8").config.num_latents == 8
    assert create_model("latents-8", num_latents=2).config.num_latents == 2  # overrides win
    model = create_model("tutorial", num_classes=5).eval()
    with torch.no_grad():  # a segmentation: class scores on a grid that follows the image
        small, large = model(torch.randn(2, 3, 32, 32)), model(torch.randn(1, 3, 64, 96))
    assert small.shape[:2] == (2, 5) and large.shape[:2] == (1, 5)
    assert (large.shape[2] / small.shape[2], large.shape[3] / small.shape[3]) == (2, 3)
    with pytest.raises(RegistryError, match="Did you mean 'tutorial'"):
        create_model("tutoral")
    with pytest.raises(ConfigError, match="model.num_latnts"):
        create_model("tutorial", num_latnts=3)


def test_the_variant_once_called_seed_still_resolves_to_tutorial_with_a_note(tmp_path):
    from latentseg.loading import load_experiment
    from latentseg.registry import RenamedWarning
    from latentseg.train.resolve import prepare

    with pytest.warns(RenamedWarning, match="'seed' is now called 'tutorial'"):
        model = create_model("seed", num_latents=8)
    assert (
        model.variant == "tutorial"
        and model.config == create_model("tutorial", num_latents=8).config
    )
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  variant: seed\n")
    with pytest.warns(RenamedWarning):
        prepared = prepare(load_experiment(path))
    # runs record the name it goes by now, so old and new configs group as one variant
    assert prepared.variant == "tutorial" and prepared.config.model.variant == "tutorial"
    assert "seed" not in list_models()
