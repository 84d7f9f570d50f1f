"""Initial weights by module: common random numbers between variants.

With one global ``torch.manual_seed`` stream, adding a module (a position encoding, a latent
block, an MoE layer) shifts the initial weights of every module built after it, so two
variants of one seed start from unrelated weights and their comparison carries the noise of
two initialisations. :func:`seed_weights` draws each module's weights from its own stream,
derived from the seed and the module's name in the model (``encoder.stage1.0``,
``latent_attention.query_proj``, ...): two variants with one seed start from the same weights
in every module they share (same name, same shape), and their paired difference measures the
module that differs, not the luck of the draw.

Each module's weights are drawn as its own constructor draws them (its ``reset_parameters``,
or ``_reset_parameters`` for ``nn.MultiheadAttention``), so the distribution of every weight
is the one its module defines; only which numbers come out changes. Children are drawn before
their parents, as in construction (``nn.MultiheadAttention`` zeroes its output projection's
bias after that projection is built).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def stream_seed(seed: int, name: str) -> int:
    """The seed of module ``name``'s stream: a 63-bit hash of the run's seed and the name."""
    digest = hashlib.blake2b(f"{int(seed)}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def reset_method(module: nn.Module):
    """What draws ``module``'s own weights: ``reset_parameters`` or ``_reset_parameters``."""
    for attribute in ("reset_parameters", "_reset_parameters"):
        method = getattr(module, attribute, None)
        if callable(method):
            return method
    return None


def undrawn(model: nn.Module) -> list[str]:
    """Parameters that no module's reset method draws: those of a module with parameters of
    its own and no ``reset_parameters`` (a plugin's custom layer). They keep the draws of the
    global stream, so they are not shared between variants."""
    names = []
    for name, module in model.named_modules():
        if reset_method(module) is None:
            names += [
                f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)
            ]
    return names


@torch.no_grad()
def seed_weights(model: nn.Module, seed: int) -> nn.Module:
    """Redraw every module's initial weights from its own stream (:func:`stream_seed`), in
    place, children before parents; the global RNG is left as it was. Returns ``model``."""
    modules = [(n, m) for n, m in model.named_modules() if reset_method(m) is not None]
    with torch.random.fork_rng(devices=[]):
        # named_modules() lists a parent before its descendants: reversed, each module is
        # drawn after all of its own submodules.
        for name, module in reversed(modules):
            torch.default_generator.manual_seed(stream_seed(seed, name))
            reset_method(module)()
    return model
