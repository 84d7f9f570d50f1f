import math

import torch

from latentseg.train.metrics import ConfusionMatrix, latent_usage, segmentation_metrics


def test_metrics_match_hand_computed_values():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 0]])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    out = segmentation_metrics(cm, ("bg", "a", "b", "absent"), "val")
    # class 0: tp 2, fp 1, fn 1 -> 0.5 ; class 1: tp 2, fp 1, fn 0 -> 2/3 ; class 2: tp 2, fn 1 -> 2/3
    assert out["val_iou_bg"] == 0.5
    assert math.isclose(out["val_iou_a"], 2 / 3) and math.isclose(out["val_iou_b"], 2 / 3)
    assert math.isnan(out["val_iou_absent"])  # absent from prediction and target: left out
    assert math.isclose(out["val_miou"], (0.5 + 2 / 3 + 2 / 3) / 3)
    assert math.isclose(out["val_pixel_accuracy"], 6 / 8)
    assert math.isclose(out["val_mdice"], (2 * 2 / (4 + 2) + 2 * 2 / (4 + 1) + 2 * 2 / (4 + 1)) / 3)


def test_ignore_index_counts_nowhere_and_batches_accumulate():
    target = torch.tensor([0, 1, 255, 255])
    pred = torch.tensor([0, 1, 1, 0])
    once = ConfusionMatrix(2, ignore_index=255)
    once.update(pred, target)
    assert once.compute()["pixel_accuracy"] == 1.0 and once.compute()["miou"] == 1.0
    twice = ConfusionMatrix(2, ignore_index=255)
    twice.update(pred[:2], target[:2])
    twice.update(pred[2:], target[2:])
    assert torch.equal(once.matrix, twice.matrix)


def test_latent_usage_entropy_and_dead_latents():
    uniform = latent_usage(torch.full((8,), 100))
    assert (
        math.isclose(uniform["latent_usage_entropy"], math.log(8)) and uniform["dead_latents"] == 0
    )
    collapsed = latent_usage(torch.tensor([1000, 0, 0, 5]))
    assert collapsed["dead_latents"] == 3 and collapsed["latent_usage_entropy"] < 0.05
