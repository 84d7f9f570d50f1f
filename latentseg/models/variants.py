"""The built-in variants. Each builder's name is its registry key (``_`` -> ``-``).

A variant is a set of ModelConfig defaults; every builder takes ``**overrides`` so that
``create_model("seed", num_latents=8)`` works for all of them. Third-party packages add
variants the same way through the ``latentseg.models`` entry-point group.
"""

from __future__ import annotations

from typing import Any

from latentseg.models import build_config, register_model
from latentseg.models.model import LatentSegModel


def _create(defaults: dict[str, Any], overrides: dict[str, Any]) -> LatentSegModel:
    return LatentSegModel(build_config(defaults, overrides))


@register_model
def seed(**overrides: Any) -> LatentSegModel:
    """The tutorial's model exactly: simple encoder, 16 latents, 4 heads, stride-4 logits."""
    return _create({}, overrides)


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
