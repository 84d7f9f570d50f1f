"""Beyond the tutorial: position encodings for the pixel tokens, and the latent stack that
refines the experts after the first cross-attention (Perceiver-style self-attention blocks,
repeated cross-attention passes, and DeepSeekMoE fine-grained experts in their MLPs)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentseg.models.attention import MultiheadCrossAttention, attend_tokens

LEARNED_GRID = 16  # side of the learned position table, resized to the token grid


def fourier_features(height: int, width: int, bands: int, device=None) -> Tensor:
    """Perceiver IO's 2-D Fourier position features, ``[height * width, 2 * (2 * bands + 1)]``.

    Each axis position ``x`` in [-1, 1] gives ``x, sin(pi f x), cos(pi f x)`` for ``bands``
    frequencies ``f`` spaced linearly from 1 to the axis' Nyquist frequency (``size / 2``).
    """
    features = []
    for size in (height, width):
        x = torch.linspace(-1.0, 1.0, size, device=device)
        freqs = torch.linspace(1.0, max(1.0, size / 2), bands, device=device)
        angles = math.pi * x[:, None] * freqs[None, :]
        features.append(torch.cat([x[:, None], angles.sin(), angles.cos()], dim=-1))
    rows, cols = features
    grid = torch.cat(
        [
            rows[:, None, :].expand(height, width, -1),
            cols[None, :, :].expand(height, width, -1),
        ],
        dim=-1,
    )
    return grid.reshape(height * width, -1)


class PositionEncoding(nn.Module):
    """Added to the pixel tokens ``[B, h * w, F]`` so the latent block can tell where a pixel
    is. ``learned``: a ``LEARNED_GRID``-square table, bilinearly resized to the token grid
    (as ViTs do at a new resolution). ``fourier``: fixed Fourier features through a learned
    linear map to ``F``."""

    def __init__(self, kind: str, feature_dim: int, bands: int) -> None:
        super().__init__()
        self.kind = kind
        self.bands = bands
        if kind == "learned":
            self.table = nn.Parameter(
                torch.randn(1, feature_dim, LEARNED_GRID, LEARNED_GRID) * 0.02
            )
        else:
            self.proj = nn.Linear(2 * (2 * bands + 1), feature_dim)
        self._cache: dict[tuple, Tensor] = {}

    def reset_parameters(self) -> None:
        """Draw the learned table as the constructor does (``fourier``: its map draws its own)."""
        if self.kind == "learned":
            nn.init.normal_(self.table, std=0.02)

    def encoding(self, height: int, width: int) -> Tensor:
        """``[h * w, F]`` for an ``h x w`` token grid."""
        if self.kind == "learned":
            table = self.table
            if table.shape[-2:] != (height, width):
                table = F.interpolate(
                    table, size=(height, width), mode="bilinear", align_corners=False
                )
            return table[0].flatten(1).t()
        weight = self.proj.weight
        key = (height, width, weight.device, weight.dtype)
        features = self._cache.get(key)
        if features is None:
            features = fourier_features(height, width, self.bands, weight.device).to(weight.dtype)
            if not torch.is_inference_mode_enabled():  # an inference tensor cannot train later
                self._cache[key] = features
        return self.proj(features)

    def forward(self, tokens: Tensor, height: int, width: int) -> Tensor:
        return tokens + self.encoding(height, width).to(tokens.dtype)


class MLP(nn.Module):
    """Pre-norm transformer MLP: ``Linear -> GELU -> Linear``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


@dataclass
class RouterStats:
    """Routing of the tokens seen since the last reset: assignments per routed expert."""

    counts: Tensor  # [num_experts], float64

    @property
    def load(self) -> Tensor:
        """Fraction of routed assignments per expert (sums to 1)."""
        return self.counts / self.counts.sum().clamp_min(1)

    @property
    def entropy(self) -> float:
        """Entropy of the load in nats: ``log(num_experts)`` when perfectly balanced."""
        load = self.load
        return float(-(load * load.clamp_min(1e-12).log()).sum())


class MoE(nn.Module):
    """DeepSeekMoE fine-grained experts in place of the latent MLP.

    ``num_experts`` narrow routed experts and ``num_shared`` always-on shared experts; every
    token goes to its ``top_k`` highest-scoring routed experts, weighted by their softmax
    scores (over all routed experts, not renormalised), plus all shared experts. Each expert's
    hidden width is the dense MLP's divided by ``top_k + num_shared``, so a token costs about
    what the dense MLP costs: the ablation compares at equal active compute. The shared
    experts are one MLP of ``num_shared`` times that width (the same function as their sum).

    In training, ``aux_losses`` collects the expert-level balance loss of each call,
    ``sum_i f_i P_i`` with ``f_i = E / (K T) * (tokens routed to i)`` and ``P_i`` the mean
    score of expert ``i``: 1 for a uniform load, ``E / K`` when all tokens pick the same
    experts. In evaluation, ``stats`` counts the routed assignments per expert.
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int, num_shared: int):
        super().__init__()
        width = max(1, hidden // (top_k + num_shared))
        self.num_experts, self.top_k = num_experts, top_k
        self.router = nn.Linear(dim, num_experts, bias=False)
        scale1, scale2 = dim**-0.5, width**-0.5  # nn.Linear's default init range
        self.w1 = nn.Parameter(torch.empty(num_experts, width, dim).uniform_(-scale1, scale1))
        self.b1 = nn.Parameter(torch.empty(num_experts, width).uniform_(-scale1, scale1))
        self.w2 = nn.Parameter(torch.empty(num_experts, dim, width).uniform_(-scale2, scale2))
        self.b2 = nn.Parameter(torch.empty(num_experts, dim).uniform_(-scale2, scale2))
        self.shared = MLP(dim, width * num_shared) if num_shared else None
        # one balance loss per call in training (a layer shared across passes runs more than
        # once per forward); LatentSegModel.aux_loss() takes and clears them
        self.aux_losses: list[Tensor] = []
        self.stats = RouterStats(torch.zeros(num_experts, dtype=torch.float64))

    def reset_parameters(self) -> None:
        """Draw the experts' weights as the constructor does (nn.Linear's range); the router
        and the shared experts draw their own."""
        scale1, scale2 = self.w1.shape[-1] ** -0.5, self.w2.shape[-1] ** -0.5
        for tensor, scale in (
            (self.w1, scale1),
            (self.b1, scale1),
            (self.w2, scale2),
            (self.b2, scale2),
        ):
            nn.init.uniform_(tensor, -scale, scale)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(scores [T, E], top-k expert indices [T, k], their gates [T, k])``."""
        scores = torch.softmax(self.router(x).float(), dim=-1)
        gates, indices = scores.topk(self.top_k, dim=-1)
        return scores, indices, gates

    def expert(self, e: int, x: Tensor) -> Tensor:
        return F.linear(F.gelu(F.linear(x, self.w1[e], self.b1[e])), self.w2[e], self.b2[e])

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        scores, indices, gates = self.route(tokens)
        out = self.shared(tokens) if self.shared is not None else torch.zeros_like(tokens)
        counts = torch.bincount(indices.flatten(), minlength=self.num_experts)
        for e in range(self.num_experts):  # no branch on the count: torch.export can trace it
            rows, slots = (indices == e).nonzero(as_tuple=True)
            y = self.expert(e, tokens[rows])
            y = y * gates[rows, slots].unsqueeze(-1).to(y.dtype)
            out = out.index_add(0, rows, y.to(out.dtype))
        if self.training:
            self.aux_losses.append(balance_loss(scores, counts, self.top_k))
        elif not torch.compiler.is_compiling():  # routing statistics of evaluation (no
            with torch.no_grad():  # device sync per training step; not in an exported graph)
                self.stats.counts += counts.to("cpu", torch.float64)
        return out.view(shape)


def balance_loss(scores: Tensor, counts: Tensor, top_k: int) -> Tensor:
    """DeepSeekMoE's expert-level balance loss ``sum_i f_i P_i`` (see :class:`MoE`)."""
    num_tokens, num_experts = scores.shape
    f = counts.to(scores.dtype) * num_experts / (top_k * num_tokens)
    return (f * scores.mean(0)).sum()


def latent_mlp(dim: int, ratio: int, experts: int, top_k: int, shared: int) -> nn.Module:
    hidden = dim * ratio
    if experts:
        return MoE(dim, hidden, experts, top_k, shared)
    return MLP(dim, hidden)


class LatentBlock(nn.Module):
    """Pre-norm transformer block over the latents: self-attention, then the MLP (or MoE)."""

    def __init__(self, dim: int, heads: int, impl: str, mlp: nn.Module) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = MultiheadCrossAttention(dim, heads, impl)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp

    def forward(self, z: Tensor) -> Tensor:
        h = self.norm1(z)
        z = z + self.attention(h, h, h)[0]
        return z + self.mlp(self.norm2(z))


class CrossAttendBlock(nn.Module):
    """A repeated cross-attention pass (Perceiver): the latents attend to the pixel tokens
    again, pre-norm with residual, then the MLP (or MoE). Keys and values as in the first
    pass (full rank, or MLA with ``kv_rank``)."""

    def __init__(
        self, feature_dim: int, dim: int, heads: int, impl: str, kv_rank: int | None, mlp
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        if kv_rank is None:
            self.key_proj = nn.Linear(feature_dim, dim)
            self.value_proj = nn.Linear(feature_dim, dim)
        else:
            self.kv_down = nn.Linear(feature_dim, kv_rank)
        self.attention = MultiheadCrossAttention(dim, heads, impl, kv_dim=kv_rank)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp

    def forward(self, z: Tensor, tokens: Tensor) -> Tensor:
        z = z + attend_tokens(self, self.norm1(z), tokens, need_weights=False)[0]
        return z + self.mlp(self.norm2(z))


class LatentStack(nn.Module):
    """After the tutorial's cross-attention: ``depth`` latent self-attention blocks, then
    ``passes - 1`` more rounds of (cross-attention block + ``depth`` latent blocks), and a
    final LayerNorm. With ``share``, the repeated rounds use one set of weights (Perceiver
    shares all rounds after the first)."""

    def __init__(self, config) -> None:
        super().__init__()
        c = config

        def mlp() -> nn.Module:
            return latent_mlp(c.latent_dim, c.mlp_ratio, c.moe_experts, c.moe_top_k, c.moe_shared)

        def blocks() -> nn.ModuleList:
            return nn.ModuleList(
                LatentBlock(c.latent_dim, c.num_heads, c.attention_impl, mlp())
                for _ in range(c.latent_depth)
            )

        self.passes = c.cross_attend_passes
        self.first = blocks()
        rounds = 0 if self.passes == 1 else (1 if c.share_passes else self.passes - 1)
        self.cross = nn.ModuleList(
            CrossAttendBlock(
                c.feature_dim, c.latent_dim, c.num_heads, c.attention_impl, c.kv_rank, mlp()
            )
            for _ in range(rounds)
        )
        self.rounds = nn.ModuleList(blocks() for _ in range(rounds))
        self.norm = nn.LayerNorm(c.latent_dim)

    def forward(self, z: Tensor, tokens: Tensor) -> Tensor:
        for block in self.first:
            z = block(z)
        for p in range(self.passes - 1):
            r = min(p, len(self.cross) - 1)
            z = self.cross[r](z, tokens)
            for block in self.rounds[r]:
                z = block(z)
        return self.norm(z)


def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]
