"""What a run pictures: the images it logs under the keys the report looks up."""

import os

import torch

from latentseg.tracking.logged import PLOT_KEYS
from latentseg.tracking.pictures import draw, spare_core


def _pictured(with_experts: bool) -> dict:
    images = torch.rand(2, 3, 16, 16)
    return {
        "images": images,
        "masks": torch.randint(0, 3, (2, 16, 16)),
        "predictions": torch.randint(0, 3, (2, 16, 16)),
        "latent_maps": torch.rand(2, 4, 4, 4) if with_experts else None,
        "assignment": torch.randint(0, 4, (2, 4, 4)) if with_experts else None,
    }


def test_a_run_draws_its_predictions_and_with_experts_their_attention():
    names = ("background", "square", "disc")
    drawn = draw(_pictured(True), names, num_latents=4)
    assert tuple(drawn) == PLOT_KEYS  # the report finds them by these keys
    for image in drawn.values():
        assert image.ndim == 3 and image.shape[-1] in (3, 4) and image.dtype.name == "uint8"
    assert tuple(draw(_pictured(False), names, num_latents=4)) == ("predictions",)


def test_drawing_overlaps_training_only_with_a_core_to_spare():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert spare_core(torch.device("cpu")) == ((os.cpu_count() or 1) > 1)
    finally:
        torch.set_num_threads(threads)
