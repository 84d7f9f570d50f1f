"""What a training run pictures: predictions and attention on its fixed val batch
(:func:`snapshot`), drawn as the images it logs (:func:`draw`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from latentseg.train.callbacks import TrainContext


def spare_core(device: torch.device) -> bool:
    """Whether drawing on a background thread can overlap training: on an accelerator, or
    with a CPU core that torch's threads leave free."""
    return device.type != "cpu" or (os.cpu_count() or 1) > torch.get_num_threads()


@torch.no_grad()
def snapshot(context: TrainContext) -> dict[str, Any]:
    """Predictions and attention on the fixed val batch, as CPU tensors."""
    model = context.model
    was_training = model.training
    model.eval()
    images, masks = context.plot_batch
    logits, maps = model(images.to(context.device), return_attention=True)
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    model.train(was_training)
    return {
        "epoch": context.state.epoch,
        "images": images,
        "masks": masks,
        "predictions": logits.argmax(1).cpu(),
        "latent_maps": None if maps is None else maps.latent_maps().float().cpu(),
        "assignment": None if maps is None else maps.assignment().cpu(),
    }


def draw(
    pictured: dict[str, Any], class_names: tuple[str, ...], num_latents: int
) -> dict[str, np.ndarray]:
    """The images of a :func:`snapshot` by MLflow image key (``PLOT_KEYS``): predictions and,
    with expert attention, the latents' attention and the experts' assignment."""
    from latentseg import plots

    figures = {
        "predictions": plots.prediction_figure(
            pictured["images"], pictured["masks"], pictured["predictions"], class_names
        )
    }
    if pictured["latent_maps"] is not None:
        figures["latent_attention"] = plots.latent_attention_figure(
            pictured["images"][0], pictured["latent_maps"][0]
        )
        figures["expert_assignment"] = plots.assignment_figure(
            pictured["images"][0], pictured["assignment"][0], num_latents
        )
    return {key: plots.figure_to_array(figure) for key, figure in figures.items()}
