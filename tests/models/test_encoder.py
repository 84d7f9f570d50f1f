"""The CNN encoders (latentseg.models.encoder): stride-4 features of ``feature_dim`` channels,
and the fast path's pool-first order computes the tutorial's values."""

from __future__ import annotations

import torch

from latentseg.config import ModelConfig
from latentseg.models.encoder import SimpleEncoder, build_encoder


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
