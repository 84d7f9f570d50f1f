"""The CNN encoders (latentseg.models.encoder): stride-4 features of ``feature_dim`` channels,
and the fast path's pool-first order computes the tutorial's values."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latentseg.config import ModelConfig
from latentseg.models.encoder import SimpleEncoder, build_encoder, max_pool_2x2


def test_both_encoders_give_stride_4_features_of_feature_dim():
    images = torch.randn(2, 3, 32, 48)
    for encoder in ("simple", "deep"):
        model = build_encoder(ModelConfig(encoder=encoder, feature_dim=24)).eval()
        first, features = model.stages(images)
        assert features.shape == (2, 24, 8, 12), encoder
        assert first.shape[2:] == (16, 24), encoder  # the first stage: stride 2


def test_pooling_before_the_relu_gives_the_tutorials_values_and_gradients():
    torch.manual_seed(0)
    tutorial = SimpleEncoder(3, 16)
    fast = SimpleEncoder(3, 16, pool_first=True)
    fast.load_state_dict(tutorial.state_dict())
    images = torch.randn(2, 3, 16, 16)
    expected, actual = tutorial(images), fast(images)
    torch.testing.assert_close(actual, expected)
    expected.square().sum().backward()
    actual.square().sum().backward()
    torch.testing.assert_close(fast.conv1.weight.grad, tutorial.conv1.weight.grad)


def test_the_inference_pooling_gives_max_pool2ds_values_in_every_layout_and_size():
    gen = torch.Generator().manual_seed(0)
    # integers: many ties; a NaN propagates as in max_pool2d; 70 images: not a whole number
    # of the cache-sized chunks
    images = torch.randint(-3, 3, (70, 32, 16, 10), generator=gen).float()
    images[3, 5, 7, 2] = float("nan")
    for x in (images.contiguous(memory_format=torch.channels_last), images, images[..., :9]):
        pooled = max_pool_2x2(x)
        torch.testing.assert_close(pooled, F.max_pool2d(x, 2, 2), equal_nan=True)
        assert pooled.is_contiguous(memory_format=torch.channels_last) == (
            x.is_contiguous(memory_format=torch.channels_last)
        )
