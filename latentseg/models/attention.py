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

    def __init__(
        self, embed_dim: int, num_heads: int, impl: str = "fused", kv_dim: int | None = None
    ) -> None:
        # kv_dim (MLA): keys and values arrive as a kv_dim-wide compressed latent and the key
        # and value projections are the up-projections [embed_dim, kv_dim].
        super().__init__(embed_dim, num_heads, batch_first=True, kdim=kv_dim, vdim=kv_dim)
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
        dim, w, b = self.embed_dim, self.in_proj_weight, self.in_proj_bias
        if w is not None and query is key and key is value:  # self-attention: one matmul
            q, k, v = F.linear(query, w, b).chunk(3, dim=-1)
        elif w is not None and key is value:  # one matmul for keys and values
            q = F.linear(query, w[:dim], b[:dim])
            k, v = F.linear(key, w[dim:], b[dim:]).chunk(2, dim=-1)
        else:  # separate sources, or MLA's separate up-projections
            (w_q, b_q), (w_k, b_k), (w_v, b_v) = self.in_slices()
            q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
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
        b = self.in_proj_bias
        if self.in_proj_weight is not None:
            w = self.in_proj_weight
            weights = (w[:dim], w[dim : 2 * dim], w[2 * dim :])
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        return tuple((weights[i], b[i * dim : (i + 1) * dim]) for i in range(3))

    def attend_compressed(
        self, q: Tensor, c: Tensor, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        """MLA with the up-projections absorbed (DeepSeek-V2): attention of in-projected
        ``q [B, Lq, D]`` over the compressed latent ``c [B, N, r]`` without building the
        ``N x D`` keys and values. Per head, ``q.(W_k c) = (W_k^T q).c`` and
        ``sum a W_v c = W_v (sum a c)``; the key bias shifts every score of a query equally
        (softmax ignores it) and the value bias passes through (the weights sum to 1).
        Same values as :meth:`attend` on ``W_k c + b_k``, ``W_v c + b_v``."""
        _, (w_k, _), (w_v, b_v) = self.in_slices()
        batch, len_q, dim = q.shape
        heads, head_dim, rank = self.num_heads, dim // self.num_heads, c.shape[-1]
        q = q.view(batch, len_q, heads, head_dim).transpose(1, 2)
        q = q @ w_k.view(heads, head_dim, rank)  # [B, heads, Lq, r]
        c = c.unsqueeze(1)  # one compressed latent shared by every head
        weights = None
        if need_weights:
            weights = torch.softmax((q @ c.transpose(-2, -1)) * head_dim**-0.5, dim=-1)
            out = weights @ c
        else:
            c = c.expand(batch, heads, *c.shape[2:])
            out = F.scaled_dot_product_attention(q, c, c, scale=head_dim**-0.5)
        out = out @ w_v.view(heads, head_dim, rank).transpose(-2, -1)  # [B, heads, Lq, hd]
        return out.transpose(1, 2).reshape(batch, len_q, dim) + b_v, weights


def compose(outer: tuple[Tensor, Tensor], inner: nn.Linear) -> tuple[Tensor, Tensor]:
    """``(W, b)`` of ``x -> outer(inner(x))``: two linear maps as one.

    Applied to many tokens, one matmul replaces two (and two backward matmuls replace
    four); autograd through the small weight product gives both layers their exact
    gradients, so the model and its training are unchanged (up to float rounding).
    """
    weight, bias = outer
    return weight @ inner.weight, weight @ inner.bias + bias


def attend_tokens(
    owner: nn.Module,
    queries: Tensor,
    tokens: Tensor,
    need_weights: bool,
    query_proj: nn.Linear | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``queries [B or 1, L, D]`` (through ``query_proj`` if given) cross-attend to the pixel
    ``tokens [B, N, F]`` with ``owner.attention``. Keys and values come from the tutorial's
    ``owner.key_proj`` / ``owner.value_proj`` or, with MLA, from the compressed latent
    ``c = owner.kv_down(tokens)`` rebuilt by the attention's up-projections."""
    attention: MultiheadCrossAttention = owner.attention
    down = getattr(owner, "kv_down", None)
    batch = tokens.shape[0]
    if attention.impl == "reference":
        if query_proj is not None:
            queries = query_proj(queries.expand(batch, -1, -1))
        if down is not None:
            c = down(tokens)
            return attention(queries, c, c, need_weights)
        return attention(queries, owner.key_proj(tokens), owner.value_proj(tokens), need_weights)
    # Fast path: query_proj folded into the query in-projection (applied once, before the
    # batch expand); the key/value projections folded into the in-projections and run as one
    # matmul over the tokens; with MLA, attention over c with the up-projections absorbed.
    (w_q, b_q), key_in, value_in = attention.in_slices()
    if query_proj is not None:
        w_q, b_q = compose((w_q, b_q), query_proj)
    q = F.linear(queries, w_q, b_q)
    if down is not None:
        out, weights = attention.attend_compressed(
            q.expand(batch, -1, -1), down(tokens), need_weights
        )
        return attention.out_proj(out), weights
    w_k, b_k = compose(key_in, owner.key_proj)
    w_v, b_v = compose(value_in, owner.value_proj)
    len_q, dim = q.shape[-2:]
    if not need_weights and q.shape[0] == 1 and len_q * attention.num_heads <= 2 * dim:
        return attention.out_proj(
            attend_shared(attention, q[0], tokens, (w_k, b_k), (w_v, b_v))
        ), None
    k, v = F.linear(tokens, torch.cat([w_k, w_v]), torch.cat([b_k, b_v])).chunk(2, dim=-1)
    out, weights = attention.attend(q.expand(batch, -1, -1), k, v, need_weights)
    return attention.out_proj(out), weights


def attend_shared(
    attention: MultiheadCrossAttention,
    q: Tensor,
    tokens: Tensor,
    key: tuple[Tensor, Tensor],
    value: tuple[Tensor, Tensor],
) -> Tensor:
    """Multi-head attention of in-projected queries ``q [L, D]``, the same for every image,
    over the tokens ``[B, N, F]`` whose keys and values are ``key`` / ``value`` (weight
    ``[D, F]``, bias) of them: ``[B, L, D]`` before the output projection.

    The keys and values of the tokens are never built (DeepSeek-V2's absorption, as in
    :meth:`MultiheadCrossAttention.attend_compressed`): per head, ``q.(W_k t + b_k) =
    (W_k^T q).t + q.b_k``, so every score comes from one matmul over the tokens
    (``heads * L`` columns, no more than the ``2 D`` of the key and value projection), and
    ``sum_n a_n (W_v t_n + b_v) = W_v (sum_n a_n t_n) + b_v``. The key bias stays in the
    scores when gradients are on, so it gets its gradient as in the reference. Same values
    as :meth:`attend`.
    """
    (w_k, b_k), (w_v, b_v) = key, value
    batch, _, features = tokens.shape
    len_q, dim = q.shape
    heads = attention.num_heads
    head_dim = dim // heads
    q = q.view(len_q, heads, head_dim).transpose(0, 1) * head_dim**-0.5  # [heads, L, hd]
    score_weight = (q @ w_k.view(heads, head_dim, features)).reshape(heads * len_q, features)
    if torch.is_grad_enabled():
        score_bias = (q @ b_k.view(heads, head_dim, 1)).reshape(heads * len_q)
        weights = F.linear(tokens, score_weight, score_bias).softmax(dim=1)  # [B, N, heads * L]
        pooled = weights.transpose(1, 2) @ tokens  # [B, heads * L, F]
    else:
        # Inference: the key bias shifts all of a query's scores equally (softmax drops it)
        # and no weights are kept for a backward, so the score rows attend to the tokens
        # (keys and values both) in one fused kernel, block by block, without the
        # [B, N, heads * L] scores and weights.
        as_head = tokens.unsqueeze(1)
        rows = score_weight.expand(batch, 1, -1, -1)
        pooled = F.scaled_dot_product_attention(rows, as_head, as_head, scale=1.0)
    w_v = w_v.view(heads, head_dim, features).transpose(-2, -1)
    out = pooled.view(batch, heads, len_q, features) @ w_v  # [B, heads, L, hd]
    return out.transpose(1, 2).reshape(batch, len_q, dim) + b_v


def attend_experts(
    attention: MultiheadCrossAttention,
    tokens: Tensor,
    query: tuple[Tensor, Tensor],
    keys: Tensor,
    values: Tensor,
    output: tuple[Tensor, Tensor],
    skip: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The pixel tokens ``[B, N, F]`` attend to each image's few experts with ``attention``'s
    heads: ``(output(attended) + skip(tokens) [B, N, C], weights [B, heads, N, L])``, where
    ``query`` (weight ``[D, F]``, bias) in-projects the tokens, ``keys, values [B, L, D]`` are
    in-projected, ``output`` (weight ``[C, D]``, bias) maps the attended values and ``skip``
    (weight ``[C, F]``, bias), if given, maps the tokens alongside.

    Neither the queries nor the attended values of the ``N`` tokens are built (the absorption
    of :func:`attend_shared`, per image): per head, ``k.(W_q t + b_q) = (W_q^T k).t + k.b_q``,
    so every score comes from one matmul over the tokens (``heads * L`` columns, no more than
    the ``D`` of the query projection when ``heads * L <= D``), and
    ``W_o sum_l a_l v_l = sum_l a_l (W_o v_l)``, so the output is one matmul of the weights
    with ``C`` columns. Same values as :meth:`MultiheadCrossAttention.attend` between the
    projections.
    """
    (w_q, b_q), (w_out, b_out) = query, output
    batch, len_k, dim = keys.shape
    features = tokens.shape[-1]
    heads = attention.num_heads
    head_dim = dim // heads
    k = keys.view(batch, len_k, heads, head_dim).transpose(1, 2) * head_dim**-0.5
    score_weight = (k @ w_q.view(heads, head_dim, features)).view(batch, heads * len_k, features)
    score_bias = (k @ b_q.view(heads, head_dim, 1)).view(batch, 1, heads * len_k)
    scores = torch.baddbmm(score_bias, tokens, score_weight.transpose(1, 2))  # [B, N, heads*L]
    weights = scores.view(batch, -1, heads, len_k).softmax(dim=-1)
    v = values.view(batch, len_k, heads, head_dim).transpose(1, 2)
    value_out = v @ w_out.view(-1, heads, head_dim).permute(1, 2, 0)  # [B, heads, L, C]
    start = b_out if skip is None else F.linear(tokens, skip[0], skip[1] + b_out)
    out = torch.baddbmm(
        start, weights.view(batch, -1, heads * len_k), value_out.reshape(batch, heads * len_k, -1)
    )
    return out, weights.transpose(1, 2)


class LatentAttention(nn.Module):
    """Learned latents (queries) cross-attend to the pixel tokens: ``[B, N, F] -> [B, L, D]``.

    ``kv_rank`` (MLA, DeepSeek-V2): instead of the full-rank ``key_proj`` and ``value_proj``,
    the tokens are compressed to ``c = kv_down(tokens)`` (``kv_rank`` wide) and the keys and
    values are rebuilt from ``c`` by the attention's up-projections.
    """

    def __init__(
        self,
        feature_dim: int,
        latent_dim: int,
        num_latents: int,
        num_heads: int,
        impl: str,
        kv_rank: int | None = None,
    ) -> None:
        super().__init__()
        # Creation order follows the tutorial so that seeded initialisation matches it.
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim))
        if kv_rank is None:
            self.key_proj = nn.Linear(feature_dim, latent_dim)
            self.value_proj = nn.Linear(feature_dim, latent_dim)
        else:
            self.kv_down = nn.Linear(feature_dim, kv_rank)
        self.query_proj = nn.Linear(latent_dim, latent_dim)
        self.attention = MultiheadCrossAttention(latent_dim, num_heads, impl, kv_dim=kv_rank)

    def reset_parameters(self) -> None:
        """Draw the latents as the constructor does (its submodules draw their own)."""
        nn.init.normal_(self.latents)

    def forward(self, tokens: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        return attend_tokens(
            self, self.latents.unsqueeze(0), tokens, need_weights, query_proj=self.query_proj
        )


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
        kv_rank: int | None = None,
    ) -> None:
        super().__init__()
        self.pixel_proj = nn.Linear(feature_dim, latent_dim)
        self.attention = (
            MultiheadCrossAttention(latent_dim, num_heads, impl, kv_dim=kv_rank)
            if experts
            else None
        )
        self.segmentation_head = nn.Linear(latent_dim, num_classes)
        self.pixel_residual = pixel_residual
        # MLA: the experts (keys and values) are compressed to kv_rank and rebuilt by the
        # attention's up-projections.
        self.kv_down = nn.Linear(latent_dim, kv_rank) if experts and kv_rank else None

    def forward(
        self, tokens: Tensor, experts: Tensor | None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        attention = self.attention
        if attention is None:
            return self.segmentation_head(self.pixel_proj(tokens)), None
        if self.kv_down is not None:
            experts = self.kv_down(experts)
        if attention.impl == "reference":
            pixels = self.pixel_proj(tokens)
            attended, weights = attention(pixels, experts, experts, need_weights)
            pixels = attended + pixels if self.pixel_residual else attended
            return self.segmentation_head(pixels), weights
        # Fast path: pixel_proj folded into the query in-projection and the output projection
        # into the class head; with few experts, both absorbed into the experts' keys and
        # values (attend_experts), so no per-pixel queries or attended values are built.
        query_in, (w_k, b_k), (w_v, b_v) = attention.in_slices()
        w_q, b_q = compose(query_in, self.pixel_proj)
        head = self.segmentation_head
        w_out, b_out = compose((head.weight, head.bias), attention.out_proj)
        k, v = F.linear(experts, torch.cat([w_k, w_v]), torch.cat([b_k, b_v])).chunk(2, dim=-1)
        if experts.shape[1] * attention.num_heads <= attention.embed_dim:
            skip = None
            if self.pixel_residual:  # head(pixel_proj(tokens)), as one map of the tokens
                skip = (head.weight @ self.pixel_proj.weight, head.weight @ self.pixel_proj.bias)
            logits, weights = attend_experts(
                attention, tokens, (w_q, b_q), k, v, (w_out, b_out), skip
            )
            return logits, weights if need_weights else None
        if self.pixel_residual:
            both = F.linear(
                tokens,
                torch.cat([w_q, self.pixel_proj.weight]),
                torch.cat([b_q, self.pixel_proj.bias]),
            )
            q, pixels = both.chunk(2, dim=-1)
        else:
            q = F.linear(tokens, w_q, b_q)
        out, weights = attention.attend(q, k, v, need_weights)
        logits = F.linear(out, w_out, b_out)
        if self.pixel_residual:
            logits = logits + F.linear(pixels, head.weight)
        return logits, weights
