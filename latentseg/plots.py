"""Figures of predictions and attention (matplotlib, Agg), used by tracking and reports.

Every function takes CPU tensors and returns a ``matplotlib.figure.Figure``;
:func:`figure_to_array` turns one into an RGB array for ``mlflow.log_image``. Figures are built
with matplotlib's object API (no pyplot state), so they can be drawn on a background thread
while training goes on, and laid out with fixed margins (no ``tight_layout`` pass).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor


def _display(image: Tensor) -> np.ndarray:
    """``[C, H, W]`` -> ``[H, W, 3]`` in [0, 1], min-max normalised as the tutorial shows it."""
    image = image.float()
    image = (image - image.min()) / (image.max() - image.min() + 1e-8)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image[:3].permute(1, 2, 0).numpy()


def class_colormap(num_classes: int) -> ListedColormap:
    base = colormaps["tab10" if num_classes <= 10 else "tab20"]
    return ListedColormap([base(i % base.N) for i in range(num_classes)])


def _tile(
    panels: list[np.ndarray], cols: int, gap: int, label: int = 0
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Equal-sized ``[H, W, 3]`` panels on a white mosaic, ``cols`` per row, ``gap`` pixels
    apart with ``label`` pixels above each row for a title; returns the mosaic and each
    panel's (top, left). One image on one axes draws several times faster than an axes per
    panel, and these figures are drawn while training waits."""
    height, width = panels[0].shape[:2]
    rows = -(-len(panels) // cols)
    cell_h, cell_w = label + height + gap, width + gap
    mosaic = np.ones((rows * cell_h - gap, min(cols, len(panels)) * cell_w - gap, 3))
    positions = []
    for index, panel in enumerate(panels):
        top, left = (index // cols) * cell_h + label, (index % cols) * cell_w
        mosaic[top : top + height, left : left + width] = panel
        positions.append((top, left))
    return mosaic, positions


def prediction_figure(
    images: Tensor, masks: Tensor, predictions: Tensor, class_names: tuple[str, ...]
) -> Figure:
    """One row per sample: input, ground truth, prediction (same class colours), with a legend,
    composed by :func:`_tile`."""
    rows = images.shape[0]
    height, width = images.shape[-2:]
    cmap = class_colormap(len(class_names))
    lut = np.asarray([cmap(i)[:3] for i in range(len(class_names))])

    def paint(labels: Tensor) -> np.ndarray:  # ignored pixels (any other value): light grey
        labels = labels.numpy()
        out = np.full((*labels.shape, 3), 0.85)
        valid = (labels >= 0) & (labels < len(lut))
        out[valid] = lut[labels[valid]]
        return out

    gap = max(2, width // 16)
    mosaic, _ = _tile(
        [
            panel
            for r in range(rows)
            for panel in (_display(images[r]), paint(masks[r]), paint(predictions[r]))
        ],
        cols=3,
        gap=gap,
    )
    figure_height = 2.4 * rows + 0.6
    fig = Figure(figsize=(7.5, figure_height))
    ax = fig.add_axes((0.02, 0.55 / figure_height, 0.96, 1 - 0.9 / figure_height))
    ax.imshow(mosaic, interpolation="nearest", aspect="equal")
    ax.axis("off")
    for c, title in enumerate(("input", "ground truth", "prediction")):
        ax.text(c * (width + gap) + width / 2, -gap, title, ha="center", va="bottom")
    handles = [Patch(color=cmap(i), label=name) for i, name in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
    return fig


def _overlay(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """``heat`` (min-max normalised, magma, alpha 0.7) over ``gray`` (alpha 0.5) on white."""
    span = heat.max() - heat.min()
    colours = colormaps["magma"]((heat - heat.min()) / (span if span > 0 else 1.0))[..., :3]
    under = 0.5 * gray[..., None] + 0.5
    return 0.7 * colours + 0.3 * under


def latent_attention_figure(image: Tensor, latent_maps: Tensor) -> Figure:
    """Each latent's attention over the image (mean over heads), upsampled and overlaid,
    composed by :func:`_tile` (17 axes took ~0.5 s to lay out and render, this ~0.05 s)."""
    latents = latent_maps.shape[0]
    height, width = image.shape[-2:]
    maps = F.interpolate(
        latent_maps[None].float(), size=(height, width), mode="bilinear", align_corners=False
    )[0].numpy()
    cols = min(8, latents + 1)
    rows = int(np.ceil((latents + 1) / cols))
    gap, label = max(2, width // 16), max(12, height // 5)  # pixels between panels, above them
    shown = _display(image)
    gray = shown.mean(-1)
    titles = ["input"] + [f"latent {k}" for k in range(latents)]
    mosaic, positions = _tile(
        [shown] + [_overlay(gray, maps[k]) for k in range(latents)], cols, gap, label
    )
    fig = Figure(figsize=(1.9 * cols, 2.0 * rows + 0.4))
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 0.5 / (2.0 * rows + 0.4)))
    for title, (top, left) in zip(titles, positions, strict=True):
        ax.text(left + width / 2, top - 2, title, ha="center", va="bottom", fontsize=9)
    ax.imshow(mosaic, interpolation="nearest", aspect="equal")
    ax.axis("off")
    fig.suptitle("latent -> pixel attention (mean over heads)", fontsize=10)
    return fig


def assignment_figure(image: Tensor, assignment: Tensor, num_latents: int) -> Figure:
    """The expert each pixel attends to most (argmax over latents), with a legend of shares."""
    height, width = image.shape[-2:]
    full = F.interpolate(assignment[None, None].float(), size=(height, width), mode="nearest")[
        0, 0
    ].long()
    cmap = ListedColormap([colormaps["tab20"](i % 20) for i in range(num_latents)])
    fig = Figure(figsize=(8.5, 4))
    axes = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.01, right=0.78, top=0.92, bottom=0.02, wspace=0.05)
    axes[0].imshow(_display(image))
    axes[0].set_title("input")
    axes[1].imshow(full.numpy(), cmap=cmap, vmin=0, vmax=num_latents - 1, interpolation="nearest")
    axes[1].set_title("pixel -> expert assignment")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    counts = torch.bincount(assignment.flatten(), minlength=num_latents)
    share = counts.float() / counts.sum()
    handles = [
        Patch(color=cmap(k), label=f"latent {k}: {share[k]:.0%}")
        for k in range(num_latents)
        if counts[k] > 0
    ]
    axes[1].legend(
        handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False
    )
    return fig


def figure_to_array(fig: Figure, dpi: int = 80) -> np.ndarray:
    """Render ``fig``; returns ``[H, W, 3]`` uint8."""
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
