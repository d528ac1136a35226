"""Bi-half autoencoder (Li & van Gemert, AAAI 2021): every bit splits each training batch half/half.

The bi-half layer sorts each code unit's inputs a (B, K) over the batch and gives the top half the
bit 1 and the bottom half 0, so each bit carries one full bit of entropy by construction (the optimal
transport of the inputs onto a balanced two-point distribution). Backward, the gradient passes
straight through and a term gamma/2 * mean((a - b)^2), b = +-1, pulls the inputs towards their
assigned bits (the paper's backward adds gamma (U - B) / numel to the gradient, the same thing).
Evaluation has no batch to split: the bit is a > 0, as in the paper (sign(U) at test time); the pull
term keeps the batch split and the sign close.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import register
from .hashing import SemanticHashAE, SemHashConfig


def half_split(a: torch.Tensor) -> torch.Tensor:
    """(B, K) -> float 0/1 (B, K): 1 for the larger half of each column (B // 2 ones per column)."""
    rank = a.argsort(dim=0).argsort(dim=0)  # 0 = smallest in its column
    return (rank >= a.shape[0] - a.shape[0] // 2).to(a.dtype)


@dataclass
class BiHalfConfig(SemHashConfig):
    noise_std: float = 0.0  # unused: the split is the binarisation
    gamma: float = 50.0  # weight of the pull of the inputs towards their bits (recon is in nats/image)

    def check(self) -> None:
        super().check()
        if self.gamma < 0:
            raise ConfigError("model.gamma must be >= 0")


@register("hash-bihalf")
class BiHalfHashAE(SemanticHashAE):
    Config = BiHalfConfig

    def code(self, a: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not self.training:
            return (a > 0).to(a.dtype), {}
        b = half_split(a.detach())
        s = (torch.tanh(a) + 1) / 2  # the straight-through path: bits forward, tanh's gradient back
        z = s + (b - s).detach()
        pull = 0.5 * self.cfg.gamma * (a.float() - (2 * b.float() - 1)).pow(2).mean()
        return z, {"pull": pull}
