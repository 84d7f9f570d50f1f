"""Model registry: named variants of the latent-attention segmentation model.

>>> from latentseg.models import create_model, list_models
>>> list_models("latents-*")
>>> model = create_model("tutorial", num_latents=8)
"""

from __future__ import annotations

from typing import Any

# inert_keys and MOE_KEYS are rules of the config alone: they live there, re-exported here.
from latentseg.config import (
    INIT_MODES,
    MOE_KEYS,  # noqa: F401
    ModelConfig,
    inert_keys,
)
from latentseg.errors import ConfigError
from latentseg.models.init import seed_weights
from latentseg.models.model import (
    AttentionMaps,
    LatentSegModel,
    count_flops,
    count_params,
    kv_costs,
)
from latentseg.models.registry import MODELS, build_config, register_model


def create_model(
    name: str, *, seed: int | None = None, init: str = "modules", **overrides: Any
) -> LatentSegModel:
    """Build variant ``name`` with ``overrides`` of any ModelConfig key.

    Without ``seed``, the weights are drawn from torch's global stream in construction order
    (so ``torch.manual_seed(42); create_model("tutorial")`` is the tutorial's model). With
    ``seed``, they are exactly those a run with ``train.seed=seed`` (and ``train.init=init``)
    starts from, and the global stream is left as it was: ``init="modules"`` draws each
    module's weights from its own stream (:mod:`latentseg.models.init`), so two variants of
    one seed share the weights of every module they have in common; ``init="global"`` draws
    them all from ``torch.manual_seed(seed)`` in construction order.
    """
    if init not in INIT_MODES:
        raise ConfigError(f"init: '{init}' is not one of {', '.join(INIT_MODES)}")
    name = MODELS.canonical(name)
    if seed is None:
        model = MODELS.get(name)(**overrides)
    else:
        import torch

        with torch.random.fork_rng(devices=[]):  # the CPU stream: weights are built there
            torch.default_generator.manual_seed(seed)
            model = MODELS.get(name)(**overrides)
    if not isinstance(model, LatentSegModel):
        raise ConfigError(
            f"model variant '{name}' returned {type(model).__name__}, expected a LatentSegModel"
        )
    if seed is not None and init == "modules":
        seed_weights(model, seed)
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
