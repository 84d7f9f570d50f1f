"""The tutorial's model, written from its specification (../shared/seed/tutorial.md), as an
independent reference for the `tutorial` variant."""

import torch
import torch.nn.functional as F
from torch import nn


class SimpleEncoder(nn.Module):
    def __init__(self, in_channels=3, feature_dim=64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, feature_dim, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        return self.pool(F.relu(self.conv2(x)))


class LatentAttention(nn.Module):
    def __init__(self, feature_dim, latent_dim, num_latents, num_heads):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim))
        self.key_proj = nn.Linear(feature_dim, latent_dim)
        self.value_proj = nn.Linear(feature_dim, latent_dim)
        self.query_proj = nn.Linear(latent_dim, latent_dim)
        self.attention = nn.MultiheadAttention(latent_dim, num_heads, batch_first=True)

    def forward(self, x):
        keys, values = self.key_proj(x), self.value_proj(x)
        queries = self.query_proj(self.latents.unsqueeze(0).expand(x.size(0), -1, -1))
        out, _ = self.attention(queries, keys, values)
        return out


class ExpertSegmentation(nn.Module):
    def __init__(self, feature_dim, latent_dim, num_heads, num_classes):
        super().__init__()
        self.pixel_proj = nn.Linear(feature_dim, latent_dim)
        self.attention = nn.MultiheadAttention(latent_dim, num_heads, batch_first=True)
        self.segmentation_head = nn.Linear(latent_dim, num_classes)

    def forward(self, x, latent_experts):
        pixels = self.pixel_proj(x)
        out, _ = self.attention(pixels, latent_experts, latent_experts)
        return self.segmentation_head(out)


class SegmentationModel(nn.Module):
    def __init__(
        self,
        in_channels=3,
        feature_dim=64,
        latent_dim=64,
        num_latents=16,
        num_heads=4,
        num_classes=2,
    ):
        super().__init__()
        self.encoder = SimpleEncoder(in_channels, feature_dim)
        self.latent_attention = LatentAttention(feature_dim, latent_dim, num_latents, num_heads)
        self.expert_segmentation = ExpertSegmentation(
            feature_dim, latent_dim, num_heads, num_classes
        )

    def forward(self, x):
        features = self.encoder(x)
        b, c, h, w = features.shape
        features = features.view(b, c, h * w).permute(0, 2, 1)
        experts = self.latent_attention(features)
        logits = self.expert_segmentation(features, experts)
        return logits.permute(0, 2, 1).view(b, -1, h, w)
