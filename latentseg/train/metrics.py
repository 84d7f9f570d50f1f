"""Segmentation metrics from a confusion matrix accumulated on the device.

Classes absent from both the prediction and the target (IoU and Dice are 0/0) are left
out of the means (NaN per class, ``nanmean`` over classes) rather than counted as 0 or 1.
Pixels equal to ``ignore_index`` count nowhere.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ConfusionMatrix:
    """``matrix[t, p]`` counts pixels of true class ``t`` predicted as ``p``."""

    def __init__(
        self, num_classes: int, ignore_index: int | None = None, device: torch.device | str = "cpu"
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """``prediction`` and ``target``: integer class maps of the same shape."""
        valid = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            valid &= target != self.ignore_index
        index = target[valid] * self.num_classes + prediction[valid]
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )

    def compute(self) -> dict[str, Tensor]:
        return metrics_of(self.matrix)


def per_image_confusion(
    prediction: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None
) -> Tensor:
    """``[B, C, C]``: each image's confusion matrix (``matrix[b, t, p]``); their sum is what
    :class:`ConfusionMatrix` accumulates. Saved per test image, they let the report resample
    the test set (bootstrap) without rerunning a model."""
    batch = prediction.shape[0]
    valid = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        valid &= target != ignore_index
    image = torch.arange(batch, device=target.device).view(-1, *([1] * (target.dim() - 1)))
    index = (image.expand_as(target)[valid] * num_classes + target[valid]) * num_classes
    index += prediction[valid]
    counts = torch.bincount(index, minlength=batch * num_classes**2)
    return counts.view(batch, num_classes, num_classes)


def metrics_of(matrix: Tensor) -> dict[str, Tensor]:
    """Pixel accuracy, mIoU, mean Dice and per-class IoU and Dice of a ``[C, C]`` matrix."""
    m = matrix.double()
    tp = m.diag()
    fp = m.sum(0) - tp
    fn = m.sum(1) - tp
    union = tp + fp + fn
    nan = torch.tensor(float("nan"), dtype=m.dtype, device=m.device)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), nan)
    total = m.sum()
    return {
        "pixel_accuracy": tp.sum() / total if total > 0 else nan,
        "miou": iou.nanmean(),
        "mdice": dice.nanmean(),
        "iou": iou,
        "dice": dice,
    }


def segmentation_metrics(
    matrix: ConfusionMatrix, class_names: tuple[str, ...], prefix: str
) -> dict[str, float]:
    """Flat ``{prefix_miou: ..., prefix_iou_<class>: ...}`` floats (one sync for all)."""
    values = matrix.compute()
    out = {
        f"{prefix}_pixel_accuracy": float(values["pixel_accuracy"]),
        f"{prefix}_miou": float(values["miou"]),
        f"{prefix}_mdice": float(values["mdice"]),
    }
    for name, iou in zip(class_names, values["iou"].tolist(), strict=True):
        out[f"{prefix}_iou_{name}"] = iou
    return out


def latent_usage(assignment_counts: Tensor) -> dict[str, float]:
    """Diagnostics from how many pixels chose each latent: usage entropy (nats; log L when
    every latent is used equally) and dead latents (chosen by < 1% of pixels)."""
    share = assignment_counts.double() / assignment_counts.sum().clamp(min=1)
    entropy = -(share[share > 0] * share[share > 0].log()).sum()
    return {"latent_usage_entropy": float(entropy), "dead_latents": float((share < 0.01).sum())}
