"""Latent cross-attention: the tutorial's modules, with a fused SDPA path over the same weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiheadCrossAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (same parameters and state-dict keys as the tutorial's) with
    two forward paths:

    - ``reference``: the module's own forward, called as the tutorial calls it;
    - ``fused``: the same in/out projections around ``F.scaled_dot_product_attention``.

    ``forward`` returns ``(output, weights)``; ``weights`` is ``[B, heads, L_query, L_key]``
    when ``need_weights`` is set and ``None`` otherwise, so the training path never
    materialises the attention matrix in the fused implementation.
    """

    def __init__(self, embed_dim: int, num_heads: int, impl: str = "fused") -> None:
        super().__init__(embed_dim, num_heads, batch_first=True)
        self.impl = impl

    def forward(  # type: ignore[override]
        self, query: Tensor, key: Tensor, value: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        if self.impl == "reference":
            if need_weights:
                return super().forward(
                    query, key, value, need_weights=True, average_attn_weights=False
                )
            # The tutorial's call: need_weights defaults to True (averaged weights, discarded).
            output, _ = super().forward(query, key, value)
            return output, None
        return self._fused(query, key, value, need_weights)

    def _fused(
        self, query: Tensor, key: Tensor, value: Tensor, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        dim = self.embed_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, w[:dim], b[:dim])
        if key is value:  # one matmul for keys and values when they share a source
            k, v = F.linear(key, w[dim:], b[dim:]).chunk(2, dim=-1)
        else:
            k = F.linear(key, w[dim : 2 * dim], b[dim : 2 * dim])
            v = F.linear(value, w[2 * dim :], b[2 * dim :])
        out, weights = self.attend(q, k, v, need_weights)
        return self.out_proj(out), weights

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Multi-head attention of projected ``q [B, Lq, D]``, ``k, v [B, Lk, D]``, before
        the output projection: ``(out [B, Lq, D], weights [B, heads, Lq, Lk] | None)``."""
        batch, len_q, dim = q.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        q = q.view(batch, len_q, heads, head_dim).transpose(1, 2)
        k = k.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        v = v.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        weights = None
        if need_weights:
            weights = torch.softmax((q @ k.transpose(-2, -1)) * head_dim**-0.5, dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(batch, len_q, dim), weights

    def in_slices(self) -> tuple[tuple[Tensor, Tensor], ...]:
        """The (weight, bias) of the query, key and value input projections."""
        dim = self.embed_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        return tuple((w[i * dim : (i + 1) * dim], b[i * dim : (i + 1) * dim]) for i in range(3))


def compose(outer: tuple[Tensor, Tensor], inner: nn.Linear) -> tuple[Tensor, Tensor]:
    """``(W, b)`` of ``x -> outer(inner(x))``: two linear maps as one.

    Applied to many tokens, one matmul replaces two (and two backward matmuls replace
    four); autograd through the small weight product gives both layers their exact
    gradients, so the model and its training are unchanged (up to float rounding).
    """
    weight, bias = outer
    return weight @ inner.weight, weight @ inner.bias + bias


class LatentAttention(nn.Module):
    """Learned latents (queries) cross-attend to the pixel tokens: ``[B, N, F] -> [B, L, D]``."""

    def __init__(
        self, feature_dim: int, latent_dim: int, num_latents: int, num_heads: int, impl: str
    ) -> None:
        super().__init__()
        # Creation order follows the tutorial so that seeded initialisation matches it.
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim))
        self.key_proj = nn.Linear(feature_dim, latent_dim)
        self.value_proj = nn.Linear(feature_dim, latent_dim)
        self.query_proj = nn.Linear(latent_dim, latent_dim)
        self.attention = MultiheadCrossAttention(latent_dim, num_heads, impl)

    def forward(self, tokens: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        queries = self.query_proj(self.latents.expand(tokens.shape[0], -1, -1))
        attention = self.attention
        if attention.impl == "reference":
            return attention(queries, self.key_proj(tokens), self.value_proj(tokens), need_weights)
        # Fast path: key_proj then the key in-projection (and the same for values) as one
        # matmul over the tokens, keys and values together.
        (w_q, b_q), key_in, value_in = attention.in_slices()
        w_k, b_k = compose(key_in, self.key_proj)
        w_v, b_v = compose(value_in, self.value_proj)
        k, v = F.linear(tokens, torch.cat([w_k, w_v]), torch.cat([b_k, b_v])).chunk(2, dim=-1)
        out, weights = attention.attend(F.linear(queries, w_q, b_q), k, v, need_weights)
        return attention.out_proj(out), weights


class ExpertSegmentation(nn.Module):
    """Pixel tokens attend to the latent experts, then a linear per-pixel class head.

    Without ``experts`` (the 'no expert attention' ablation) no attention is built: the
    projected pixel tokens go straight to the head.
    """

    def __init__(
        self,
        feature_dim: int,
        latent_dim: int,
        num_heads: int,
        num_classes: int,
        impl: str,
        experts: bool,
        pixel_residual: bool,
    ) -> None:
        super().__init__()
        self.pixel_proj = nn.Linear(feature_dim, latent_dim)
        self.attention = MultiheadCrossAttention(latent_dim, num_heads, impl) if experts else None
        self.segmentation_head = nn.Linear(latent_dim, num_classes)
        self.pixel_residual = pixel_residual

    def forward(
        self, tokens: Tensor, experts: Tensor | None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        attention = self.attention
        if attention is None:
            return self.segmentation_head(self.pixel_proj(tokens)), None
        if attention.impl == "reference":
            pixels = self.pixel_proj(tokens)
            attended, weights = attention(pixels, experts, experts, need_weights)
            pixels = attended + pixels if self.pixel_residual else attended
            return self.segmentation_head(pixels), weights
        # Fast path: pixel_proj then the query in-projection as one matmul over the tokens
        # (with the projected pixels alongside when the residual needs them), and the output
        # projection folded into the class head.
        query_in, (w_k, b_k), (w_v, b_v) = attention.in_slices()
        w_q, b_q = compose(query_in, self.pixel_proj)
        if self.pixel_residual:
            both = F.linear(
                tokens,
                torch.cat([w_q, self.pixel_proj.weight]),
                torch.cat([b_q, self.pixel_proj.bias]),
            )
            q, pixels = both.chunk(2, dim=-1)
        else:
            q = F.linear(tokens, w_q, b_q)
        k, v = F.linear(experts, torch.cat([w_k, w_v]), torch.cat([b_k, b_v])).chunk(2, dim=-1)
        out, weights = attention.attend(q, k, v, need_weights)
        head = self.segmentation_head
        w_out, b_out = compose((head.weight, head.bias), attention.out_proj)
        logits = F.linear(out, w_out, b_out)
        if self.pixel_residual:
            logits = logits + F.linear(pixels, head.weight)
        return logits, weights
