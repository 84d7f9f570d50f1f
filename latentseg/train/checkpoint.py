"""Checkpoints.

- ``best.safetensors`` / ``model.safetensors``: weights only (safetensors) with the resolved
  config as JSON metadata, enough to rebuild the model alone (:func:`load_model_file`).
- ``last.ckpt``: the training state to resume (weights, optimizer, scheduler, RNG, epoch,
  best so far), a dict of tensors and plain values read back with ``weights_only=True``.

Both are written atomically (temporary file, fsync, ``os.replace``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from latentseg.config import ModelConfig
from latentseg.errors import CheckpointError
from latentseg.io import atomic_write_bytes
from latentseg.models import MODELS, LatentSegModel, create_model

FORMAT_VERSION = "1"
TRAINING_STATE_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "rng",
    "state",
    "step_in_epoch",
    "loss_sum",
    "loss_count",
    "model_config",
    "variant",
    "experiment_config",
)


def save_weights(path: str | Path, model: torch.nn.Module, metadata: dict[str, Any]) -> Path:
    """Weights + ``metadata`` (must hold ``model_config`` and ``variant``) as safetensors."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {"format": "latentseg", "format_version": FORMAT_VERSION}
    header.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    return _write(path, save_safetensors(tensors, metadata=header))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    try:
        tensors = load_safetensors(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {exc}") from None
    if metadata.get("format") != "latentseg":
        raise CheckpointError(f"{path} was not written by latentseg (no latentseg metadata)")
    return tensors, metadata


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    return _write(path, buffer.getvalue())


def _write(path: str | Path, data: bytes) -> Path:
    """Atomic write; a full disk or an unwritable folder is a CheckpointError naming the path
    (the previous checkpoint stays in place)."""
    try:
        return atomic_write_bytes(path, data)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise CheckpointError(
            f"cannot write checkpoint {path}: {exc.strerror or exc}{where}"
        ) from None


def load_training_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: say which
        raise CheckpointError(
            f"cannot load training state {path}: {type(exc).__name__}: {exc}"
        ) from None
    missing = [k for k in TRAINING_STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a latentseg training checkpoint (missing {', '.join(missing)})"
        )
    return state


def load_model_file(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild a model from a latentseg checkpoint (``.safetensors`` or ``last.ckpt``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        tensors, metadata = read_weights(path)
        config_json, variant = metadata.get("model_config"), metadata.get("variant")
    else:
        state = load_training_state(path)
        tensors, config_json, variant = (
            state["model"],
            state.get("model_config"),
            state.get("variant"),
        )
    if not config_json:
        raise CheckpointError(f"{path} holds no model config; cannot rebuild the model")
    config = ModelConfig.model_validate_json(config_json)
    # A registered variant rebuilds through its own builder (a plugin may subclass the model).
    model = (
        create_model(variant, **config.model_dump())
        if variant in MODELS
        else LatentSegModel(config, variant)
    )
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not match the stored model config: {exc}"
        ) from None
    return model.to(map_location).eval()
