"""Model registry: named variants of the latent-attention segmentation model.

>>> from latentseg.models import create_model, list_models
>>> list_models("latents-*")
>>> model = create_model("seed", num_latents=8)
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from latentseg.config import ModelConfig, format_validation_error
from latentseg.errors import ConfigError
from latentseg.models.model import (
    AttentionMaps,
    LatentSegModel,
    count_flops,
    count_params,
    kv_costs,
)
from latentseg.registry import Registry

MODELS: Registry = Registry("model", entry_point_group="latentseg.models")
register_model = MODELS.register


def build_config(
    defaults: dict[str, Any], overrides: dict[str, Any], source: str = "model"
) -> ModelConfig:
    """Variant defaults updated by user overrides, validated; errors name the key."""
    try:
        return ModelConfig.model_validate({**defaults, **overrides})
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, ModelConfig, source, prefix=("model",))
        ) from None


def create_model(name: str, **overrides: Any) -> LatentSegModel:
    """Build variant ``name`` with ``overrides`` of any ModelConfig key."""
    model = MODELS.get(name)(**overrides)
    if not isinstance(model, LatentSegModel):
        raise ConfigError(
            f"model variant '{name}' returned {type(model).__name__}, expected a LatentSegModel"
        )
    model.variant = name
    return model


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The resolved ModelConfig of variant ``name`` with ``overrides`` (builds it once, on CPU)."""
    return create_model(name, **overrides).config


def inert_keys(config: dict[str, Any]) -> set[str]:
    """ModelConfig keys that do not change the model given the others (``config``: key ->
    value, values as Python objects or their string forms; missing keys take their
    defaults): without expert attention there are no latents, heads or latent stack; without
    a latent MLP (``latent_depth`` 0, one pass) there is nothing for MoE to replace; and so on."""

    def value(key: str, default: Any) -> str:
        return str(config.get(key, default)).lower()

    inert: set[str] = set()
    if value("expert_attention", True) in ("false", "0"):
        inert |= {"num_latents", "num_heads", "latent_depth", "cross_attend_passes"}
        inert |= {"share_passes", "kv_rank", "mlp_ratio", *MOE_KEYS}  # no latent block at all
    if value("latent_depth", 0) == "0" and value("cross_attend_passes", 1) == "1":
        inert |= {"mlp_ratio", *MOE_KEYS}  # no latent MLP to replace
    if value("cross_attend_passes", 1) in ("1", "2"):
        inert.add("share_passes")  # nothing after the first pass to share
    if value("moe_experts", 0) == "0":
        inert |= MOE_KEYS - {"moe_experts"}
    if value("position_encoding", "none") != "fourier":
        inert.add("fourier_bands")
    return inert


MOE_KEYS = frozenset({"moe_experts", "moe_top_k", "moe_shared", "moe_aux_weight"})


def list_models(pattern: str = "*") -> list[str]:
    """Registered variant names matching an fnmatch pattern, e.g. ``'latents-*'``."""
    return MODELS.names(pattern)


from latentseg.models import variants  # noqa: E402,F401  (registers the built-in variants)

__all__ = [
    "MODELS",
    "AttentionMaps",
    "LatentSegModel",
    "build_config",
    "count_flops",
    "count_params",
    "create_model",
    "inert_keys",
    "kv_costs",
    "list_models",
    "model_config",
    "register_model",
]
