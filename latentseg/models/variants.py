"""The built-in variants. Each builder's name is its registry key (``_`` -> ``-``).

A variant is a set of ModelConfig defaults; every builder takes ``**overrides`` so that
``create_model("tutorial", num_latents=8)`` works for all of them. Third-party packages add
variants the same way through the ``latentseg.models`` entry-point group.
"""

from __future__ import annotations

from typing import Any

from latentseg.models.model import LatentSegModel
from latentseg.models.registry import MODELS, build_config, register_model


def _create(defaults: dict[str, Any], overrides: dict[str, Any]) -> LatentSegModel:
    return LatentSegModel(build_config(defaults, overrides))


@register_model
def tutorial(**overrides: Any) -> LatentSegModel:
    """The tutorial's model exactly: simple encoder, 16 latents, 4 heads, stride-4 logits."""
    return _create({}, overrides)


# Its first name, which read like a random seed everywhere ("seed runs", train.seed).
MODELS.rename("seed", "tutorial")


@register_model
def no_expert(**overrides: Any) -> LatentSegModel:
    """Ablation: no latent experts; pixel tokens go through pixel_proj straight to the head."""
    return _create({"expert_attention": False}, overrides)


@register_model
def latents_4(**overrides: Any) -> LatentSegModel:
    return _create({"num_latents": 4}, overrides)


@register_model
def latents_8(**overrides: Any) -> LatentSegModel:
    return _create({"num_latents": 8}, overrides)


@register_model
def latents_32(**overrides: Any) -> LatentSegModel:
    return _create({"num_latents": 32}, overrides)


@register_model
def heads_1(**overrides: Any) -> LatentSegModel:
    return _create({"num_heads": 1}, overrides)


@register_model
def heads_2(**overrides: Any) -> LatentSegModel:
    return _create({"num_heads": 2}, overrides)


@register_model
def residual(**overrides: Any) -> LatentSegModel:
    """The tutorial's model plus the Perceiver IO pixel residual in the decoder."""
    return _create({"pixel_residual": True}, overrides)


@register_model
def deep_residual(**overrides: Any) -> LatentSegModel:
    """Deep dilated encoder + pixel residual + full-resolution logits: the strongest built-in."""
    return _create({"encoder": "deep", "pixel_residual": True, "output": "full"}, overrides)


@register_model
def deep_no_expert(**overrides: Any) -> LatentSegModel:
    """The deep encoder without expert attention: does the latent block still matter?"""
    return _create({"encoder": "deep", "expert_attention": False, "output": "full"}, overrides)


# Beyond the tutorial: the ideas its title borrows (Perceiver, MLA, DeepSeekMoE), each on
# the tutorial's model so that an ablation isolates it.


@register_model
def fourier(**overrides: Any) -> LatentSegModel:
    """The tutorial's model with Perceiver IO's 2-D Fourier position features on the pixels."""
    return _create({"position_encoding": "fourier"}, overrides)


@register_model
def learned_pos(**overrides: Any) -> LatentSegModel:
    """The tutorial's model with a learned position table on the pixel tokens."""
    return _create({"position_encoding": "learned"}, overrides)


@register_model
def perceiver_d2(**overrides: Any) -> LatentSegModel:
    """Perceiver-style: Fourier positions and 2 latent self-attention blocks after the
    cross-attention."""
    return _create({"position_encoding": "fourier", "latent_depth": 2}, overrides)


@register_model
def perceiver_p3(**overrides: Any) -> LatentSegModel:
    """Perceiver-style: 3 cross-attention passes, one latent block each, passes 2 and 3
    sharing weights."""
    return _create(
        {
            "position_encoding": "fourier",
            "latent_depth": 1,
            "cross_attend_passes": 3,
            "share_passes": True,
        },
        overrides,
    )


@register_model
def mla_r16(**overrides: Any) -> LatentSegModel:
    """DeepSeek-V2 MLA: keys and values of both cross-attentions from a rank-16 latent."""
    return _create({"kv_rank": 16}, overrides)


@register_model
def mla_r8(**overrides: Any) -> LatentSegModel:
    """DeepSeek-V2 MLA with rank-8 keys and values."""
    return _create({"kv_rank": 8}, overrides)


@register_model
def moe_8x2_s1(**overrides: Any) -> LatentSegModel:
    """DeepSeekMoE: 2 latent blocks whose MLPs are 8 narrow experts, top-2 routed + 1 shared."""
    return _create(
        {"latent_depth": 2, "moe_experts": 8, "moe_top_k": 2, "moe_shared": 1}, overrides
    )


@register_model
def skip(**overrides: Any) -> LatentSegModel:
    """The tutorial's head refined at stride 2 with the encoder's first-stage features."""
    return _create({"decoder": "attention+skip", "output": "full"}, overrides)


@register_model
def beyond_all(**overrides: Any) -> LatentSegModel:
    """Everything at once: Fourier positions, 2 MoE latent blocks, MLA rank 16, skip decoder."""
    return _create(
        {
            "position_encoding": "fourier",
            "latent_depth": 2,
            "kv_rank": 16,
            "moe_experts": 8,
            "moe_top_k": 2,
            "moe_shared": 1,
            "decoder": "attention+skip",
            "output": "full",
        },
        overrides,
    )
