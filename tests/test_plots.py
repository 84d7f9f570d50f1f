"""The figures logged to MLflow: drawn from CPU tensors, with every pixel value handled."""

import numpy as np
import torch

from latentseg import plots


def colour_present(array: np.ndarray, rgb, tolerance: int = 3) -> bool:
    target = np.asarray(rgb) * 255
    return bool((np.abs(array.astype(float) - target).max(-1) <= tolerance).any())


def test_prediction_figure_paints_each_class_in_its_colour_and_ignored_pixels_grey():
    images = torch.rand(2, 3, 32, 32)
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[:, :16] = 2
    masks[0, :4, :4] = 255  # an ignore index (VOC's boundary value)
    predictions = torch.ones(2, 32, 32, dtype=torch.long)
    array = plots.figure_to_array(
        plots.prediction_figure(images, masks, predictions, ("bg", "a", "b"))
    )
    cmap = plots.class_colormap(3)
    assert array.dtype == np.uint8 and array.shape[-1] == 3
    for label in (0, 1, 2):
        assert colour_present(array, cmap(label)[:3]), label
    assert colour_present(array, (0.85, 0.85, 0.85))


def test_latent_attention_figure_shows_the_input_and_one_panel_per_latent():
    image = torch.zeros(3, 16, 16)
    image[0] = 1.0  # pure red input
    maps = torch.zeros(5, 4, 4)
    maps[:, 0, 0] = 1.0  # each latent attends to one corner
    fig = plots.latent_attention_figure(image, maps)
    array = plots.figure_to_array(fig)
    assert colour_present(array, (1.0, 0.0, 0.0), tolerance=8)  # the input panel
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert texts == {"input"} | {f"latent {k}" for k in range(5)}
