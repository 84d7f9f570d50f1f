"""The axes beyond the tutorial (position encodings, latent stack, MLA, MoE, skip decoder),
each checked against a plain computation on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from latentseg.config import ModelConfig
from latentseg.errors import ConfigError
from latentseg.models import create_model, inert_keys, kv_costs, list_models
from latentseg.models.attention import MultiheadCrossAttention
from latentseg.models.latent import (
    LEARNED_GRID,
    MLP,
    LatentBlock,
    MoE,
    PositionEncoding,
    balance_loss,
    fourier_features,
)


def plain_attention(q, k, v, heads):
    """Multi-head softmax(q k^T / sqrt(d)) v, one head at a time, on [L, D] tensors."""
    d = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        s = slice(h * d, (h + 1) * d)
        weights = torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(d), dim=-1)
        outs.append(weights @ v[:, s])
    return torch.cat(outs, dim=-1)


def test_fourier_features_are_perceiver_ios_per_axis_sines_and_cosines():
    height, width, bands = 3, 4, 2
    got = fourier_features(height, width, bands)
    assert got.shape == (height * width, 2 * (2 * bands + 1))
    for i in range(height):
        for j in range(width):
            row = []
            for pos, size in (
                (-1 + 2 * i / (height - 1), height),
                (-1 + 2 * j / (width - 1), width),
            ):
                freqs = [1 + (size / 2 - 1) * b / (bands - 1) for b in range(bands)]
                row += [pos, *(math.sin(math.pi * f * pos) for f in freqs)]
                row += [math.cos(math.pi * f * pos) for f in freqs]
            torch.testing.assert_close(got[i * width + j], torch.tensor(row), atol=1e-6, rtol=0)


def test_learned_position_table_is_added_as_is_at_its_grid_and_resized_elsewhere():
    torch.manual_seed(0)
    encoding = PositionEncoding("learned", feature_dim=5, bands=1)
    tokens = torch.randn(2, LEARNED_GRID * LEARNED_GRID, 5)
    out = encoding(tokens, LEARNED_GRID, LEARNED_GRID)
    table = encoding.table[0].permute(1, 2, 0).reshape(-1, 5)  # row-major, like the tokens
    torch.testing.assert_close(out, tokens + table)
    small = encoding(torch.zeros(1, 16, 5), 4, 4)
    expected = F.interpolate(encoding.table, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(small[0], expected[0].permute(1, 2, 0).reshape(16, 5))


def test_position_encoding_lets_the_model_tell_pixels_apart():
    """Constant images: without positions every inner pixel gets the same logits; with them
    not (the pixel residual carries each pixel's own token to the head)."""
    images = torch.ones(1, 3, 32, 32)
    torch.manual_seed(0)
    plain = create_model("residual").eval()(images)
    assert torch.allclose(
        plain[..., 3:-3, 3:-3], plain[..., 3:4, 3:4].expand_as(plain[..., 3:-3, 3:-3])
    )
    for kind in ("fourier", "learned"):
        torch.manual_seed(0)
        model = create_model("residual", position_encoding=kind)
        if kind == "learned":
            torch.nn.init.normal_(model.position.table)
        logits = model.eval()(images)[..., 3:-3, 3:-3]
        assert logits.flatten(2).std(-1).min() > 1e-4, kind


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_latent_block_matches_a_plain_pre_norm_transformer_block(impl):
    torch.manual_seed(0)
    dim, heads = 8, 2
    block = LatentBlock(dim, heads, impl, MLP(dim, 16)).eval()
    z = torch.randn(1, 5, dim)
    attention = block.attention
    (w_q, b_q), (w_k, b_k), (w_v, b_v) = attention.in_slices()
    h = F.layer_norm(z[0], (dim,), block.norm1.weight, block.norm1.bias)
    attended = plain_attention(h @ w_q.T + b_q, h @ w_k.T + b_k, h @ w_v.T + b_v, heads)
    z1 = z[0] + attended @ attention.out_proj.weight.T + attention.out_proj.bias
    h2 = F.layer_norm(z1, (dim,), block.norm2.weight, block.norm2.bias)
    mlp = block.mlp
    expected = z1 + F.gelu(h2 @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias
    torch.testing.assert_close(block(z)[0], expected, atol=1e-5, rtol=1e-5)


def test_depth_and_passes_build_the_stack_and_shared_passes_reuse_one_set_of_weights():
    unshared = create_model("tutorial", latent_depth=2, cross_attend_passes=3)
    shared = create_model("tutorial", latent_depth=2, cross_attend_passes=3, share_passes=True)
    assert len(unshared.latent_stack.first) == 2
    assert len(unshared.latent_stack.cross) == 2 and len(shared.latent_stack.cross) == 1
    assert sum(len(r) for r in unshared.latent_stack.rounds) == 4
    one_round = sum(p.numel() for p in shared.latent_stack.cross.parameters()) + sum(
        p.numel() for p in shared.latent_stack.rounds.parameters()
    )
    assert (
        sum(p.numel() for p in unshared.parameters()) - sum(p.numel() for p in shared.parameters())
        == one_round
    )
    # the shared round runs twice: a third pass changes the output of the two-pass model
    torch.manual_seed(0)
    two = create_model("tutorial", latent_depth=1, cross_attend_passes=2).eval()
    three = create_model(
        "tutorial", latent_depth=1, cross_attend_passes=3, share_passes=True
    ).eval()
    three.load_state_dict(two.state_dict())
    images = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(two(images), three(images))
    assert create_model("tutorial").latent_stack is None  # depth 0, one pass: the tutorial


def full_rank_mla_like(seed_model, impl):
    """An MLA model with kv_rank = feature_dim = latent_dim whose down-projections are the
    identity and whose up-projections carry the full-rank model's key/value maps."""
    mla = create_model("tutorial", kv_rank=64, attention_impl=impl)
    state = {k: v for k, v in seed_model.state_dict().items()}
    new = mla.state_dict()
    eye = torch.eye(64)
    with torch.no_grad():
        for k in new:
            if k in state and state[k].shape == new[k].shape:
                new[k] = state[k].clone()
        la = seed_model.latent_attention
        (_, (w_k, b_k), (w_v, b_v)) = la.attention.in_slices()
        new["latent_attention.kv_down.weight"], new["latent_attention.kv_down.bias"] = (
            eye,
            torch.zeros(64),
        )
        # at kv_rank == latent_dim the attention keeps its packed in-projection: the key and
        # value up-projections are its middle and last thirds
        weight = la.attention.in_proj_weight.clone()
        weight[64:128], weight[128:] = w_k @ la.key_proj.weight, w_v @ la.value_proj.weight
        bias = la.attention.in_proj_bias.clone()
        bias[64:128] = w_k @ la.key_proj.bias + b_k
        bias[128:] = w_v @ la.value_proj.bias + b_v
        new["latent_attention.attention.in_proj_weight"] = weight
        new["latent_attention.attention.in_proj_bias"] = bias
        new["expert_segmentation.kv_down.weight"] = eye
        new["expert_segmentation.kv_down.bias"] = torch.zeros(64)
    mla.load_state_dict(new)
    return mla


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_mla_at_full_rank_with_identity_down_projections_reproduces_full_attention(impl):
    torch.manual_seed(0)
    seed_model = create_model("tutorial", attention_impl="reference").eval()
    mla = full_rank_mla_like(seed_model, impl).eval()
    images = torch.randn(2, 3, 32, 32)
    expected, maps = seed_model(images, return_attention=True)
    got, mla_maps = mla(images, return_attention=True)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(mla_maps.latent_to_pixel, maps.latent_to_pixel, atol=1e-6, rtol=1e-4)
    with torch.no_grad():
        assert torch.allclose(mla(images), expected, atol=2e-5, rtol=1e-4)  # SDPA path


def test_absorbed_mla_attention_equals_attention_over_rebuilt_keys_and_values():
    torch.manual_seed(0)
    attention = MultiheadCrossAttention(16, 4, "fused", kv_dim=3)
    with torch.no_grad():
        attention.in_proj_bias.normal_()  # non-zero key and value biases
    q, c = torch.randn(2, 5, 16), torch.randn(2, 7, 3)
    _, (w_k, b_k), (w_v, b_v) = attention.in_slices()
    expected, weights = attention.attend(q, c @ w_k.T + b_k, c @ w_v.T + b_v, need_weights=True)
    for need_weights in (False, True):
        got, got_weights = attention.attend_compressed(q, c, need_weights)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_weights, weights, atol=1e-6, rtol=1e-5)


def test_mla_saves_key_value_parameters_and_activations():
    tokens, latents, dim, rank = 16 * 16, 16, 64, 16
    full = kv_costs(create_model("tutorial"), (64, 64))
    mla = kv_costs(create_model("mla-r16"), (64, 64))
    # tutorial: key_proj, value_proj (F->D) + the key/value in-projections (D->D), and the
    # expert attention's key/value in-projections (D->D)
    assert full["kv_params"] == 2 * (64 * dim + dim) + 2 * (dim * dim + dim) * 2
    # MLA: down-projections (F->r, D->r) + up-projections (r->D) for keys and values
    assert mla["kv_params"] == 2 * (64 * rank + rank) + 2 * 2 * (rank * dim + dim)
    assert full["kv_activations"] == tokens * 2 * dim + latents * 2 * dim
    assert mla["kv_activations"] == tokens * rank + latents * (2 * dim + rank)
    assert mla["kv_activations"] < full["kv_activations"] / 5
    assert kv_costs(create_model("no-expert")) == {"kv_params": 0, "kv_activations": 0}


def reference_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: shared experts + the top-k routed experts weighted by their scores."""
    out = []
    for token in x:
        scores = torch.softmax(moe.router.weight @ token, dim=-1)
        chosen = sorted(range(moe.num_experts), key=lambda e: -float(scores[e].detach()))[
            : moe.top_k
        ]
        y = moe.shared(token) if moe.shared is not None else torch.zeros_like(token)
        for e in chosen:
            hidden = F.gelu(moe.w1[e] @ token + moe.b1[e])
            y = y + scores[e] * (moe.w2[e] @ hidden + moe.b2[e])
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("shared", [0, 1, 2])
def test_moe_sends_each_token_to_exactly_k_routed_experts_plus_all_shared(shared):
    torch.manual_seed(0)
    moe = MoE(dim=6, hidden=24, num_experts=5, top_k=2, num_shared=shared).eval()
    x = torch.randn(11, 6)
    _, indices, gates = moe.route(x)
    assert indices.shape == (11, 2)
    assert all(len(set(row.tolist())) == 2 for row in indices)  # k distinct experts
    torch.testing.assert_close(moe(x), reference_moe(moe, x), atol=1e-5, rtol=1e-5)
    assert moe.stats.counts.sum() == 11 * 2  # evaluation: routing counted
    if shared:
        assert moe.shared.fc1.out_features == shared * (24 // (2 + shared))
        with torch.no_grad():  # routed experts off: every token still gets the shared ones
            moe.w2.zero_()
            moe.b2.zero_()
        torch.testing.assert_close(moe(x), moe.shared(x))


def test_the_balance_loss_is_minimal_for_a_uniform_load():
    experts, k, tokens = 8, 2, 64
    uniform_scores = torch.full((tokens, experts), 1 / experts)
    uniform_counts = torch.full((experts,), tokens * k // experts)
    assert balance_loss(uniform_scores, uniform_counts, k) == pytest.approx(1.0)
    collapsed_scores = torch.zeros(tokens, experts)
    collapsed_scores[:, :2] = 0.5
    collapsed_counts = torch.tensor([tokens, tokens] + [0] * (experts - 2))
    assert balance_loss(collapsed_scores, collapsed_counts, k) == pytest.approx(experts / k)
    # between the two, a partly skewed load costs more than the balanced one
    skewed_scores = torch.full((tokens, experts), 0.5 / (experts - 1))
    skewed_scores[:, 0] = 0.5
    skewed_counts = torch.tensor([tokens] + [tokens // (experts - 1)] * (experts - 1))
    assert 1.0 < balance_loss(skewed_scores, skewed_counts, k) < experts / k


def test_the_training_loss_includes_the_balance_loss_and_it_trains_the_router():
    torch.manual_seed(0)
    model = create_model("moe-8x2-s1", num_classes=3).train()
    images = torch.randn(2, 3, 32, 32)
    model(images)
    aux = model.aux_loss()
    assert aux is not None and float(aux.detach()) > 0
    assert model.aux_loss() is None  # taken: no autograd graph stays on the model
    aux.backward()
    routers = [m.router.weight.grad for m in model.modules() if isinstance(m, MoE)]
    assert len(routers) == 2 and all(g is not None and g.abs().sum() > 0 for g in routers)
    assert create_model("tutorial").aux_loss() is None
    assert model.router_stats().counts.sum() == 0  # training steps are not counted
    with torch.no_grad():
        model.eval()(images)
    stats = model.router_stats(reset=True)
    assert stats.counts.sum() == 2 * 2 * 16 * 2  # 2 layers x 2 images x 16 latents x top-2
    assert 0 < stats.entropy <= math.log(8) + 1e-9
    assert model.router_stats().counts.sum() == 0  # reset


def test_a_moe_layer_shared_across_passes_adds_a_balance_loss_per_call():
    torch.manual_seed(0)
    model = create_model(
        "tutorial", latent_depth=1, cross_attend_passes=3, share_passes=True, moe_experts=4
    ).train()
    calls = []
    for layer in model.modules():
        if isinstance(layer, MoE):
            layer.register_forward_hook(lambda *_: calls.append(1))
    model(torch.randn(1, 3, 32, 32))
    terms = sum(len(m.aux_losses) for m in model.modules() if isinstance(m, MoE))
    assert len(calls) == 5 and terms == 5  # first block + 2 x (cross block + latent block)
    expected = model.config.moe_aux_weight * sum(
        float(t.detach()) for m in model.modules() if isinstance(m, MoE) for t in m.aux_losses
    )
    assert float(model.aux_loss().detach()) == pytest.approx(expected)


def test_fourier_positions_first_used_in_inference_mode_still_train():
    encoding = PositionEncoding("fourier", feature_dim=4, bands=2)
    with torch.inference_mode():
        encoding(torch.zeros(1, 6, 4), 2, 3)
    encoding(torch.zeros(1, 6, 4), 2, 3).sum().backward()
    assert encoding.proj.weight.grad is not None
    double = PositionEncoding("fourier", feature_dim=4, bands=2).double()
    assert double(torch.zeros(1, 6, 4, dtype=torch.float64), 2, 3).dtype == torch.float64


def test_skip_decoder_refines_the_upsampled_head_at_full_resolution():
    torch.manual_seed(0)
    model = create_model("skip").eval()
    images = torch.randn(1, 3, 32, 32)
    logits = model(images)
    assert logits.shape == (1, 2, 32, 32) and model.output_size(32, 32) == (32, 32)
    with torch.no_grad():  # without the refinement: exactly the head, upsampled twice
        model.skip.conv2.weight.zero_()
        model.skip.conv2.bias.zero_()
        plain = create_model("tutorial", output="stride4").eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if "skip" not in k})
        coarse = plain(images)
        half = F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
        expected = F.interpolate(half, size=(32, 32), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(images), expected)
        assert not torch.allclose(logits, expected)


def test_named_variants_and_wildcards():
    assert list_models("mla*") == ["mla-r16", "mla-r8"]
    assert {"perceiver-d2", "perceiver-p3", "moe-8x2-s1", "fourier", "learned-pos", "skip"} <= set(
        list_models()
    )
    moe = create_model("moe-8x2-s1").config
    assert (moe.latent_depth, moe.moe_experts, moe.moe_top_k, moe.moe_shared) == (2, 8, 2, 1)
    assert create_model("mla-r16").config.kv_rank == 16
    assert ModelConfig() == create_model("tutorial").config  # every new axis off by default


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"moe_experts": 4, "moe_top_k": 5}, "moe_top_k (5) must be at most moe_experts (4)"),
        ({"decoder": "attention+skip"}, "set output: full"),
        ({"position_encoding": "sine"}, "model.position_encoding"),
        ({"kv_rank": 0}, "model.kv_rank"),
        ({"latent_depth": -1}, "model.latent_depth"),
    ],
)
def test_bad_new_axes_are_config_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_model("tutorial", **overrides)


def test_inert_keys_of_the_new_axes():
    assert {"moe_experts", "moe_top_k", "mlp_ratio"} <= inert_keys({"latent_depth": 0})
    assert "moe_experts" not in inert_keys({"latent_depth": 2, "moe_experts": 8})
    assert "moe_top_k" in inert_keys({"latent_depth": 2, "moe_experts": 0})
    assert {"kv_rank", "latent_depth"} <= inert_keys({"expert_attention": "False"})
    assert "fourier_bands" in inert_keys({"position_encoding": "learned"})
    assert "kv_rank" not in inert_keys({})


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("model.moe_top_k=9", "model: moe_top_k (9) must be at most moe_experts (4)"),
        ("model.kv_rank=-3", "--set model.kv_rank=-3: model.kv_rank:"),
        ("model.position_encoding=rope", "model.position_encoding"),
    ],
)
def test_cli_refuses_bad_new_axes_with_exit_2_and_one_clear_line(
    flag, message, tiny_yaml, tracking_uri, capsys
):
    from latentseg.cli import main

    path = tiny_yaml({"model": {"moe_experts": 4, "latent_depth": 1}})
    code = main(["train", str(path), "--set", flag, "--tracking-uri", tracking_uri])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "model: model:" not in err and "Traceback" not in err
