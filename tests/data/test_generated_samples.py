"""The generated datasets' samples, pinned: a refactor of ``shapes``, ``noise`` or ``digits``
must not change what a (data seed, params, split sizes) generates.

Masks are pinned exactly (sha256 of the int64 bytes). Images are pinned by their mean and a
weighted mean, to 1e-6: torch's ``randn`` differs in the last bits between CPU kernels (AVX2 /
AVX-512 against the scalar fallback), so an exact image hash would fail on another machine,
while any change of a sample moves these means by far more (about 1e-3 and up).

The values were recorded before the generated datasets moved onto one base class. A change
that is meant to alter the data updates them on purpose: every tracked run's data digest and
every recorded result on these datasets changes with it.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from latentseg.data import create_dataset

FIRST = 8  # samples read from the start of each split, plus the split's last sample

# (dataset, split sizes (None: the defaults), data seed, params); the default-size settings pin
# the splits' index ranges (the val split of a default-size set starts at global index 2048).
SETTINGS = {
    "shapes-small": ("shapes", {"train": 48, "val": 16, "test": 16}, 0, {"image_size": 32}),
    "shapes-default": ("shapes", None, 3, {"cache": False}),
    "shapes-two-kinds": (
        "shapes",
        {"train": 10, "val": 5, "test": 5},
        7,
        {"image_size": 48, "shapes": ["triangle", "circle"], "max_shapes": 6, "min_shapes": 0},
    ),
    "noise-small": ("noise", {"train": 48, "val": 16, "test": 16}, 0, {"image_size": 32}),
    "noise-default": ("noise", None, 2, {}),
    "noise-strided": (
        "noise",
        {"train": 20},
        5,
        {"image_size": 16, "num_classes": 5, "in_channels": 2, "label_stride": 2},
    ),
    "digits-small": ("digits", {"train": 48, "val": 16, "test": 16}, 0, {"image_size": 48}),
    "digits-default": ("digits", None, 1, {"cache": False}),
    "digits-two-or-three": (
        "digits",
        {"train": 12, "val": 6, "test": 6},
        9,
        {"image_size": 32, "min_digits": 2, "max_digits": 3},
    ),
}


def fingerprint(split) -> tuple[int, str, float, float]:
    """``(len, sha256 of the masks, image mean, weighted image mean)`` over the first
    ``FIRST`` samples and the last one."""
    indices = [*range(min(FIRST, len(split))), len(split) - 1]
    images, masks = split.get_batch(indices)
    assert images.dtype == torch.float32 and masks.dtype == torch.int64
    weights = torch.sin(torch.arange(images[0].numel(), dtype=torch.float64)).view_as(images[0])
    images = images.double()
    return (
        len(split),
        hashlib.sha256(masks.numpy().tobytes()).hexdigest()[:32],
        float(images.mean()),
        float((images * weights).mean()),
    )


# recorded before the refactor onto GeneratedDataset; the same on AVX-512, AVX2 and scalar kernels
PINNED: dict[str, dict[str, tuple[int, str, float, float]]] = {
    "shapes-small": {
        "train": (48, "83f4d1ad9196fde168632b078ec3364e", 0.066489076, -0.000036210),
        "val": (16, "9500b5a4c0cb080883b72d082130ebb8", 0.076384647, 0.000264879),
        "test": (16, "70cbbc5e1939540331c521b75c8975fd", -0.076503737, 0.000842616),
    },
    "shapes-default": {
        "train": (2048, "40440685f3073666aaf5a407729a7ebf", -0.140879519, -0.000212936),
        "val": (256, "61806b5739c6567e985cb53219d349d3", 0.113355162, 0.000734132),
        "test": (256, "2788b2009c51c7802fa8f24011e2cee7", -0.124376174, -0.001549460),
    },
    "shapes-two-kinds": {
        "train": (10, "b27ac70a8253af3168f0a87d859fb948", 0.047953808, -0.001237338),
        "val": (5, "e24c1d0ac03e2a1659cd5d1ce2c6a743", -0.351178883, -0.001084786),
        "test": (5, "e172f38b7b1d1116f2f267a4a101f677", 0.249187888, -0.001347258),
    },
    "noise-small": {
        "train": (48, "e5f40026dc4be403cbae2d62646404c1", -0.002731224, -0.005291829),
        "val": (16, "b9c0d58c13524995d1f1e9448179ecb7", 0.000235901, -0.000803374),
        "test": (16, "16500021d9484082c10eefdba905a4ef", -0.007360400, -0.000492872),
    },
    "noise-default": {
        "train": (2048, "889689ba1d71ca636e228188fb622602", -0.001050623, -0.000685128),
        "val": (256, "215e5e0981c2b1f4d4d63e225a15fdb7", -0.001245710, 0.000749266),
        "test": (256, "425b7a640e9f24009007fbe5f5932665", 0.000178880, -0.000591282),
    },
    "noise-strided": {
        "train": (20, "666a518da1f42680bd1eded58a9098ab", -0.018041148, -0.000248674),
        "val": (256, "b7ae9f40439db939c431ef8ad2a35d1a", 0.014003076, -0.013501168),
        "test": (256, "d1340ff522ba4daae86ffe7e954e1f48", 0.013242520, -0.013653958),
    },
    "digits-small": {
        "train": (48, "6f603b7460bae9e571fc9ff72381f653", -0.911159977, -0.002418608),
        "val": (16, "c17f83e7783788773a554e0813350252", -0.903767896, 0.000214387),
        "test": (16, "44a3a9c398c515be056024952077ad72", -0.942441422, 0.003144524),
    },
    "digits-default": {
        "train": (2048, "d2173595314695720a8b135f06ebf444", -0.955889997, 0.002470976),
        "val": (256, "752b60a82e03f483e6a3c5a5a4632a0d", -0.987768430, 0.002394833),
        "test": (256, "0f64b8848512c7b44ef74f5d1b7cbc7e", -1.081183903, -0.000351865),
    },
    "digits-two-or-three": {
        "train": (12, "39e6469260eb4481f8f167364d2909bf", -1.055180717, 0.008400987),
        "val": (6, "c44d064158df9e62956bf90358e4734e", -0.927881532, 0.006494247),
        "test": (6, "b2c232e8c98ac35f6e12cbbc5432322d", -1.094174199, 0.009343340),
    },
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_generated_samples_are_the_pinned_ones(setting):
    name, sizes, seed, params = SETTINGS[setting]
    dataset = create_dataset(name, split_sizes=sizes, seed=seed, **params)
    pinned = PINNED[setting]
    for split in ("train", "val", "test"):
        length, masks, mean, weighted = fingerprint(dataset.split(split))
        want_length, want_masks, want_mean, want_weighted = pinned[split]
        assert (length, masks) == (want_length, want_masks), f"{split}: the masks changed"
        assert mean == pytest.approx(want_mean, rel=0, abs=1e-6), f"{split}: the images changed"
        assert weighted == pytest.approx(want_weighted, rel=0, abs=1e-6), (
            f"{split}: the images changed"
        )
