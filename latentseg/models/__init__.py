"""Model registry: named variants of the latent-attention segmentation model.

>>> from latentseg.models import create_model, list_models
>>> list_models("latents-*")
>>> model = create_model("tutorial", num_latents=8)
"""

from __future__ import annotations

from typing import Any

# inert_keys and MOE_KEYS are rules of the config alone: they live there, re-exported here.
from latentseg.config import (
    MOE_KEYS,  # noqa: F401
    ModelConfig,
    inert_keys,
)
from latentseg.errors import ConfigError
from latentseg.models.model import (
    AttentionMaps,
    LatentSegModel,
    count_flops,
    count_params,
    kv_costs,
)
from latentseg.models.registry import MODELS, build_config, register_model


def create_model(name: str, **overrides: Any) -> LatentSegModel:
    """Build variant ``name`` with ``overrides`` of any ModelConfig key."""
    name = MODELS.canonical(name)
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
