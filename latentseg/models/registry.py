"""The model registry: the variants' names, and how a variant's defaults and a user's
overrides become a validated ModelConfig. Apart from the package so that the built-in
variants (``variants.py``) register themselves without importing the package back."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from latentseg.config import ModelConfig
from latentseg.errors import ConfigError
from latentseg.registry import Registry
from latentseg.validation import format_validation_error

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
