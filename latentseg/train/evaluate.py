"""Evaluation: a split's loss, segmentation metrics and latent diagnostics, and the test
split's per-image confusion matrices the report resamples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentseg.data import Split
from latentseg.models import LatentSegModel
from latentseg.train.fastpath import to_device
from latentseg.train.metrics import (
    ConfusionMatrix,
    latent_usage,
    per_image_confusion,
    segmentation_metrics,
)
from latentseg.train.resolve import Prepared


def target_at(masks: Tensor, size: Sequence[int]) -> Tensor:
    """Masks at the logits' resolution: the centre pixel of each stride x stride cell."""
    height, width = masks.shape[-2:]
    if (height, width) == tuple(size):
        return masks
    stride = height // size[0]
    return masks[:, stride // 2 :: stride, stride // 2 :: stride][:, : size[0], : size[1]]


@torch.no_grad()
def evaluate(
    model: LatentSegModel,
    split: Split,
    batch_size: int,
    prepared: Prepared,
    device: torch.device,
    prefix: str,
    should_stop: Callable[[], bool] = lambda: False,
    per_image: list[Tensor] | None = None,
) -> dict[str, float] | None:
    """Loss, pixel accuracy, mIoU, mean Dice, per-class IoU on a split; latent diagnostics
    when the model has experts. Metrics are computed at the input resolution (stride-4
    logits are upsampled bilinearly) so that ``output`` variants compare fairly; the loss at
    the logits' resolution, as in training. Returns None when asked to stop midway.
    ``per_image``, a list, receives each batch's per-image confusion matrices (on the CPU)."""
    info = prepared.dataset.info
    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss(
        ignore_index=-100 if info.ignore_index is None else info.ignore_index, reduction="sum"
    )
    matrix = ConfusionMatrix(info.num_classes, info.ignore_index, device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    pixels = 0
    usage = None
    diagnostics = model.latent_attention is not None
    model.router_stats(reset=True)  # count this split's routing only
    for images, masks in split.batches(batch_size):
        if should_stop():
            model.train(was_training)
            return None
        images, masks = to_device(images, device), masks.to(device)
        logits, maps = (
            model(images, return_attention=True) if diagnostics else (model(images), None)
        )
        target = target_at(masks, logits.shape[-2:])
        loss_sum += loss_fn(logits.float(), target).double()
        pixels += int(
            target.numel() if info.ignore_index is None else (target != info.ignore_index).sum()
        )
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(
                logits, size=masks.shape[-2:], mode="bilinear", align_corners=False
            )
        prediction = logits.argmax(1)
        matrix.update(prediction, masks)
        if per_image is not None:
            per_image.append(
                per_image_confusion(prediction, masks, info.num_classes, info.ignore_index).cpu()
            )
        if maps is not None:
            counts = torch.bincount(maps.assignment().flatten(), minlength=model.config.num_latents)
            usage = counts if usage is None else usage + counts
    model.train(was_training)
    metrics = {
        f"{prefix}_loss": float(loss_sum) / max(1, pixels),
        **segmentation_metrics(matrix, info.class_names, prefix),
    }
    if usage is not None:
        metrics.update({f"{prefix}_{key}": value for key, value in latent_usage(usage).items()})
    router = model.router_stats(reset=True)
    if router is not None:
        metrics[f"{prefix}_router_entropy"] = router.entropy
        metrics.update(
            {
                f"{prefix}_router_load_e{expert}": float(load)
                for expert, load in enumerate(router.load.tolist())
            }
        )
    return metrics


def save_per_image(path: Path, matrices: list[Tensor], class_names: Sequence[str]) -> None:
    """The test split's per-image confusion matrices (``confusion [N, C, C]``, images in the
    split's order, ``matrix[i, true, predicted]`` pixel counts) and the class names, as a
    compressed ``.npz``: the report bootstraps over test images from them."""
    import numpy as np

    confusion = torch.cat(matrices).numpy().astype(np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:  # a file object: numpy adds no suffix of its own
        np.savez_compressed(file, confusion=confusion, class_names=np.array(list(class_names)))
