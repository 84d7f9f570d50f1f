import pytest
import torch

from latentseg.data import SplitSizes, create_dataset, list_datasets
from latentseg.errors import ConfigError, RegistryError

SIZES = SplitSizes(train=48, val=16, test=16)


def test_builtin_datasets_are_listed():
    assert {"shapes", "noise"} <= set(list_datasets())
    with pytest.raises(RegistryError, match="Did you mean 'noise'"):
        create_dataset("nois")


@pytest.mark.parametrize(
    "name,params", [("shapes", {"image_size": 32}), ("noise", {"image_size": 32})]
)
def test_samples_are_deterministic_typed_and_in_range(name, params):
    a = create_dataset(name, split_sizes=SIZES, seed=3, **params)
    b = create_dataset(name, split_sizes=SIZES, seed=3, **params)
    for split in ("train", "val", "test"):
        images, masks = a.split(split).get_batch([0, 5, 7])
        images_b, masks_b = b.split(split).get_batch([7, 0])  # order and batching do not matter
        assert images.dtype == torch.float32 and masks.dtype == torch.int64
        assert images.shape == (3, a.info.in_channels, 32, 32) and masks.shape == (3, 32, 32)
        assert torch.equal(images[0], images_b[1]) and torch.equal(masks[2], masks_b[0])
        assert int(masks.min()) >= 0 and int(masks.max()) < a.info.num_classes
        assert torch.isfinite(images).all()
    other = create_dataset(name, split_sizes=SIZES, seed=4, **params)
    assert not torch.equal(
        a.split("train").get_batch([0])[0], other.split("train").get_batch([0])[0]
    )


@pytest.mark.parametrize("name", ["shapes", "noise"])
def test_splits_never_share_a_sample(name):
    dataset = create_dataset(name, split_sizes=SIZES, image_size=32)
    seen = {}
    for split in ("train", "val", "test"):
        images, _ = dataset.split(split).get_batch(list(range(len(dataset.split(split)))))
        for i, image in enumerate(images):
            key = hash(image.numpy().tobytes())
            assert key not in seen, f"{split}[{i}] equals {seen[key]}"
            seen[key] = f"{split}[{i}]"
    assert len(seen) == 80


def test_shapes_has_every_class_with_full_resolution_masks():
    dataset = create_dataset("shapes", split_sizes=SIZES, image_size=48)
    assert dataset.info.class_names == ("background", "circle", "rectangle", "triangle")
    _, masks = dataset.split("train").get_batch(list(range(48)))
    counts = torch.bincount(masks.flatten(), minlength=4)
    assert (counts > 0).all()
    assert 0.5 < counts[0] / counts.sum() < 0.97  # mostly background, but the shapes are there


def test_shapes_colour_does_not_reveal_the_class():
    dataset = create_dataset(
        "shapes", split_sizes=SplitSizes(train=256, val=1, test=1), image_size=32, noise=0.0
    )
    images, masks = dataset.split("train").get_batch(list(range(256)))
    means = [images.permute(1, 0, 2, 3)[:, masks == c].mean(1) for c in (1, 2, 3)]
    for a in means:
        for b in means:
            assert torch.allclose(a, b, atol=0.25)  # per-class mean colours are alike


def test_shapes_params_are_validated():
    dataset = create_dataset("shapes", split_sizes=SIZES, shapes=["circle"], image_size=32)
    assert dataset.info.num_classes == 2
    with pytest.raises(ConfigError, match="unknown shape"):
        create_dataset("shapes", shapes=["hexagon"])
    with pytest.raises(ConfigError, match="multiple of 4"):
        create_dataset("shapes", image_size=30)
    with pytest.raises(ConfigError, match="data.params.sise"):
        create_dataset("shapes", sise=3)


def test_noise_labels_are_the_tutorials_stride_4_random_maps():
    dataset = create_dataset("noise", split_sizes=SIZES, image_size=32, label_stride=4)
    images, masks = dataset.split("train").get_batch(list(range(16)))
    blocks = masks.unfold(1, 4, 4).unfold(2, 4, 4)  # [B, 8, 8, 4, 4]
    assert (blocks == blocks[..., :1, :1]).all()  # constant 4x4 blocks
    share = masks.float().mean()
    assert 0.4 < share < 0.6  # uniform random labels
    assert abs(float(images.mean())) < 0.05 and abs(float(images.std()) - 1) < 0.05
