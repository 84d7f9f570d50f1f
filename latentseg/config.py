"""Frozen, strict config models: the schema of an experiment. Loading one from YAML with
``--set`` overrides, and where each value came from, is :mod:`latentseg.loading`; the wording
of validation errors, :mod:`latentseg.validation`.

Every model refuses unknown keys (a misspelt ``lerning_rate`` must not silently train at the
default rate) and is frozen. Errors name the file, the line and the key, and suggest close
matches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from latentseg.errors import ConfigError
from latentseg.validation import format_validation_error

# YAML and dotted keys, schema-free: importable from here as before
from latentseg.yamlio import (  # noqa: F401
    UniqueKeySafeLoader,
    flatten,
    key_lines,
    parse_override,
    read_yaml_mapping,
    safe_load,
    set_dotted,
)


class StrictModel(BaseModel):
    # allow_inf_nan=False: `lr: .inf` is a typo, not a learning rate.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- model axes


class ModelConfig(StrictModel):
    """The ablation axes of the latent-attention segmentation model (defaults = the tutorial)."""

    in_channels: int = Field(
        3, ge=1, le=64, description="Image channels; filled from the dataset when not set."
    )
    num_classes: int = Field(
        2,
        ge=2,
        le=1024,
        description="Output classes incl. background; filled from the dataset when not set.",
    )
    feature_dim: int = Field(
        64,
        ge=1,
        le=4096,
        description="Channels of the encoder's stride-4 feature map (pixel tokens).",
    )
    latent_dim: int = Field(
        64, ge=1, le=4096, description="Width of the latent experts and of both attentions."
    )
    num_latents: int = Field(16, ge=1, le=1024, description="Number of learned latent experts.")
    num_heads: int = Field(4, ge=1, le=64, description="Attention heads; must divide latent_dim.")
    expert_attention: bool = Field(
        True,
        description="Off: pixel tokens go straight to the head and no latent block is built (the 'without expert attention' ablation).",
    )
    pixel_residual: bool = Field(
        False,
        description="Add the pixel query back to the expert-attention output, as Perceiver IO's decoder does.",
    )
    output: Literal["stride4", "full"] = Field(
        "stride4",
        description="'stride4': logits at 1/4 resolution (tutorial); 'full': bilinearly upsampled to the input size.",
    )
    attention_impl: Literal["reference", "fused"] = Field(
        "fused",
        description="'reference': the tutorial's implementation (nn.MultiheadAttention calls, conv-ReLU-pool); 'fused': the fast path over the same parameters and values (F.scaled_dot_product_attention, pool before ReLU).",
    )
    encoder: Literal["simple", "deep"] = Field(
        "simple",
        description="'simple': the tutorial's two conv stages (10 px receptive field); 'deep': more convs per stage plus dilated context convolutions.",
    )
    encoder_width: int = Field(
        32, ge=1, le=4096, description="Channels of the first encoder stage."
    )
    encoder_depth: int = Field(2, ge=1, le=16, description="'deep' only: conv layers per stage.")
    encoder_dilations: tuple[int, ...] = Field(
        (2, 4, 8),
        description="'deep' only: dilations of the residual context convolutions at stride 4 (empty for none).",
    )
    position_encoding: Literal["none", "learned", "fourier"] = Field(
        "none",
        description="Added to the pixel tokens: 'none' (tutorial: the latent block cannot tell where a pixel is), 'learned' (a 16x16 table resized to the token grid) or 'fourier' (Perceiver IO's 2-D Fourier features through a linear map).",
    )
    fourier_bands: int = Field(
        8, ge=1, le=64, description="'fourier' only: frequency bands per axis, 1 to Nyquist."
    )
    latent_depth: int = Field(
        0,
        ge=0,
        le=32,
        description="Latent self-attention blocks (pre-norm, MLP) after each cross-attention pass; 0: the tutorial's single cross-attention.",
    )
    cross_attend_passes: int = Field(
        1,
        ge=1,
        le=16,
        description="Times the latents cross-attend to the pixels (Perceiver); passes after the first are pre-norm residual blocks with an MLP.",
    )
    share_passes: bool = Field(
        False,
        description="Passes after the first share one set of weights (Perceiver's weight sharing).",
    )
    mlp_ratio: int = Field(
        4, ge=1, le=16, description="Hidden width of the latent MLPs, in multiples of latent_dim."
    )
    kv_rank: Optional[int] = Field(  # noqa: UP045
        None,
        ge=1,
        le=4096,
        description="MLA (DeepSeek-V2): keys and values of both cross-attentions are rebuilt by up-projections from a kv_rank-wide compressed latent; null: full-rank keys and values (tutorial).",
    )
    moe_experts: int = Field(
        0,
        ge=0,
        le=256,
        description="DeepSeekMoE: the latent MLPs become this many narrow routed experts (0: dense MLP). Needs latent MLPs (latent_depth >= 1 or cross_attend_passes >= 2); without them it changes nothing.",
    )
    moe_top_k: int = Field(2, ge=1, le=64, description="MoE: routed experts per latent token.")
    moe_shared: int = Field(
        1, ge=0, le=16, description="MoE: always-on shared experts per latent token."
    )
    moe_aux_weight: float = Field(
        0.01,
        ge=0,
        le=10,
        description="MoE: weight of the load-balancing auxiliary loss added to the training loss.",
    )
    decoder: Literal["attention", "attention+skip"] = Field(
        "attention",
        description="'attention': the tutorial's pixel-to-latent head; 'attention+skip': its logits refined at stride 2 with the encoder's first-stage features, then full resolution (needs output: full).",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.latent_dim % self.num_heads:
            raise ValueError(
                f"latent_dim ({self.latent_dim}) must be divisible by num_heads ({self.num_heads}); "
                f"allowed num_heads for latent_dim {self.latent_dim}: "
                f"{[h for h in range(1, self.latent_dim + 1) if self.latent_dim % h == 0][:8]}"
            )
        if any(d < 1 for d in self.encoder_dilations):
            raise ValueError("encoder_dilations must all be >= 1")
        if self.moe_experts and self.moe_top_k > self.moe_experts:
            raise ValueError(
                f"moe_top_k ({self.moe_top_k}) must be at most moe_experts ({self.moe_experts})"
            )
        if self.decoder == "attention+skip" and self.output != "full":
            raise ValueError(
                "decoder 'attention+skip' produces full-resolution logits: set output: full"
            )
        return self


def _spec_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {
        "variant": (
            str,
            Field(
                "tutorial",
                description="Registered model variant whose defaults the other keys override (see `latentseg models`).",
            ),
        )
    }
    for name, info in ModelConfig.model_fields.items():
        annotation = info.annotation
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]  # type: ignore[misc]
        fields[name] = (Optional[annotation], Field(None, description=info.description))  # noqa: UP045
    return fields


# The experiment's ``model:`` section: a variant name plus any ModelConfig key as an override.
ModelSpec = create_model("ModelSpec", __base__=StrictModel, **_spec_fields())  # type: ignore[call-overload]


def model_overrides(spec: BaseModel) -> dict[str, Any]:
    """The ModelConfig keys a ``model:`` section sets explicitly."""
    return {k: v for k, v in spec.model_dump(exclude={"variant"}).items() if v is not None}


# train.init: how a seed draws the initial weights (latentseg.models.init).
INIT_MODES = ("modules", "global")

# The MoE keys: they change nothing without routed experts, or without a latent MLP to replace.
MOE_KEYS = frozenset({"moe_experts", "moe_top_k", "moe_shared", "moe_aux_weight"})


def inert_keys(config: Mapping[str, Any]) -> set[str]:
    """ModelConfig keys that do not change the model given the others (``config``: key ->
    value, values as Python objects or their string forms, as in MLflow params; missing keys
    take ModelConfig's defaults): without expert attention there are no latents, heads or
    latent stack; without a latent MLP (``latent_depth`` 0, one pass) there is nothing for
    MoE to replace; and so on. A rule of the config alone: it needs no model or torch."""

    def value(key: str) -> str:
        return str(config.get(key, ModelConfig.model_fields[key].default)).lower()

    inert: set[str] = set()
    if value("expert_attention") in ("false", "0"):
        inert |= {"num_latents", "num_heads", "latent_depth", "cross_attend_passes"}
        inert |= {"share_passes", "kv_rank", "mlp_ratio", *MOE_KEYS}  # no latent block at all
    if value("latent_depth") == "0" and value("cross_attend_passes") == "1":
        inert |= {"mlp_ratio", *MOE_KEYS}  # no latent MLP to replace
    if value("cross_attend_passes") in ("1", "2"):
        inert.add("share_passes")  # nothing after the first pass to share
    if value("moe_experts") == "0":
        inert |= MOE_KEYS - {"moe_experts"}
    if value("position_encoding") != "fourier":
        inert.add("fourier_bands")
    return inert


# --------------------------------------------------------------------------- experiment


class DataConfig(StrictModel):
    dataset: str = Field(
        "shapes", description="Registered dataset name (see `latentseg datasets`)."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Dataset-specific parameters, validated by the dataset (see below).",
    )
    batch_size: int = Field(16, ge=1, le=10_000_000, description="Training batch size.")
    eval_batch_size: int | None = Field(
        None, ge=1, description="Batch size for val/test; defaults to 4 x batch_size."
    )  # noqa: UP045
    train_size: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Samples in the train split; null = the dataset's default (generated data: 2048; real data: all of them, and a number caps it).",
    )  # noqa: UP045
    val_size: int | None = Field(
        None, ge=1, le=10_000_000, description="Samples in the val split; null as above (256)."
    )  # noqa: UP045
    test_size: int | None = Field(
        None, ge=1, le=10_000_000, description="Samples in the test split; null as above (256)."
    )  # noqa: UP045
    seed: int = Field(
        0,
        ge=0,
        le=2**32 - 1,
        description="Seed of the data itself, independent of train.seed so that training seeds see the same data.",
    )


class OptimConfig(StrictModel):
    name: Literal["adam", "adamw"] = Field("adam", description="Optimizer.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (decoupled for adamw).")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="Adam betas, each in [0, 1)."
    )
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="Learning-rate schedule after warmup."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps from 0 to lr.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine floor as a fraction of lr.")
    grad_clip: float | None = Field(
        None, gt=0, description="Clip the global gradient norm to this value; null for none."
    )  # noqa: UP045


class TrainConfig(StrictModel):
    epochs: int = Field(10, ge=1, le=10_000_000, description="Training epochs.")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Optimizer steps per epoch; null = one pass over the train split."
    )  # noqa: UP045
    seed: int = Field(
        42,
        ge=0,
        le=2**32 - 1,
        description="Seed for initialisation and data order (42 as in the tutorial).",
    )
    init_seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        description="Seed of the initial weights alone; null = train.seed. Pinned, seeds vary the data order and augmentation only (latentseg noise does this to split the noise by source).",
    )  # noqa: UP045
    order_seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        description="Seed of the data order and augmentation alone; null = train.seed. Pinned, seeds vary the initial weights only.",
    )  # noqa: UP045
    init: Literal[INIT_MODES] = Field(  # type: ignore[valid-type]
        "modules",
        description="How the seed draws the initial weights: 'modules' gives each module its own stream (from the seed and the module's name), so variants of one seed share the weights of every module they have in common (common random numbers: paired comparisons carry less noise); 'global' draws all from one torch.manual_seed(seed) stream in construction order (as the tutorial).",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="'auto' picks cuda, then mps, then cpu."
    )
    threads: int | None = Field(
        None, ge=1, le=1024, description="torch CPU threads; null = torch's default."
    )  # noqa: UP045
    bf16: bool = Field(
        False,
        description="bf16 autocast where the device supports it (CUDA; CPUs with AVX512-BF16 or AMX); float32 with a warning elsewhere.",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many epochs without a better val_miou; null = never.",
    )  # noqa: UP045
    plot_samples: int = Field(
        4, ge=1, le=16, description="Val images in the prediction plots (a fixed batch)."
    )


class TrackingConfig(StrictModel):
    enabled: bool = Field(
        True, description="Log the run to MLflow; off = train with local checkpoints only."
    )
    experiment: str = Field("latentseg", min_length=1, description="MLflow experiment name.")
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; null = $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db.",
    )  # noqa: UP045
    run_name: str | None = Field(
        None, description="MLflow run name; null = '<variant>-<dataset>-s<seed>'."
    )  # noqa: UP045
    log_model: bool = Field(
        True, description="Log the best model as an MLflow Model (registrable from the UI)."
    )
    attention_plots: bool = Field(
        True, description="Log attention plots at the first, best and last epoch."
    )


class ExperimentConfig(StrictModel):
    model: ModelSpec = Field(default_factory=ModelSpec, description="Model variant and overrides.")  # type: ignore[valid-type]
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> JSON-able values, e.g. ``{'model.num_latents': 16, ...}``."""
        return flatten(self.model_dump(mode="json"))

    def config_hash(self, include_seed: bool = True) -> str:
        """Hash of everything that changes results (not tracking, device or threads);
        without the seed it identifies a configuration across its seeds."""
        payload = self.model_dump(mode="json", exclude={"tracking"})
        for key in ("device", "threads", *(() if include_seed else ("seed",))):
            payload["train"].pop(key)
        for key in ("init_seed", "order_seed"):  # unset, they follow the seed: hashes as before
            if payload["train"].get(key) is None:
                payload["train"].pop(key, None)
        if payload["train"].get("init") == "global":  # the weights of before train.init
            payload["train"].pop("init")
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def with_updates(self, updates: Mapping[str, Any]) -> ExperimentConfig:
        """A copy with dotted-key updates applied and validated."""
        data = self.model_dump(mode="json")
        for key, value in updates.items():
            set_dotted(data, key, value, source=f"update '{key}'")
        try:
            return ExperimentConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(
                format_validation_error(exc, ExperimentConfig, "<updated config>")
            ) from None


SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelSpec,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "tracking": TrackingConfig,
}
