"""Straight-through binary autoencoder: hard bits forward, the logistic's gradient backward, with
bit-balance and decorrelation terms on the codes (as in DeepBit, Lin et al. 2016, and BinGAN's
regulariser, Zieba et al. 2018).

Forward the decoder sees the bits 1[a > 0] (B, K); backward the gradient flows as if it had seen
sigmoid(a) (the straight-through estimator, Bengio et al. 2013). Rounding only at the end (the
noisy-logistic `semhash`) leaves bits that are lopsided and correlated: many items share a code and
long runs of equal Hamming distances blur the ranking. So two terms on u = 2 sigmoid(a) - 1 in (-1, 1):

* balance: mean over bits of (batch mean of u)^2, zero when every bit is +1 for half the batch;
* decorrelation: mean squared off-diagonal entry of u^T u / B, zero when the bits are uncorrelated.

Their weights are in the recon loss's units (nats per image, ~100s on 28x28 images), so they are large.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import register
from .hashing import SemanticHashAE, SemHashConfig


def balance_term(u: torch.Tensor) -> torch.Tensor:
    """u (B, K) in [-1, 1] -> mean over bits of the squared batch mean: 0 for balanced bits."""
    return u.float().mean(0).pow(2).mean()


def decorrelation_term(u: torch.Tensor) -> torch.Tensor:
    """u (B, K) -> mean squared off-diagonal entry of u^T u / B: 0 for pairwise uncorrelated bits."""
    u = u.float()
    k = u.shape[1]
    c = u.T @ u / u.shape[0]  # (K, K)
    off = c - torch.diag(torch.diagonal(c))
    return off.pow(2).sum() / max(k * (k - 1), 1)


@dataclass
class HashSTEConfig(SemHashConfig):
    noise_std: float = 0.0  # no noise: the bits are hard already
    balance: float = 10.0  # weight of the bit-balance term
    decorrelate: float = 10.0  # weight of the decorrelation term

    def check(self) -> None:
        super().check()
        if self.balance < 0 or self.decorrelate < 0:
            raise ConfigError("model.balance and model.decorrelate must be >= 0")


@register("hash-ste")
class StraightThroughHashAE(SemanticHashAE):
    Config = HashSTEConfig

    def code(self, a: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.cfg.noise_std > 0 and self.training:
            a = a + self.cfg.noise_std * torch.randn_like(a)
        p = torch.sigmoid(a)
        z = p + ((a > 0).to(p.dtype) - p).detach()  # bits forward, sigmoid's gradient backward
        u = 2 * p - 1
        terms = {"balance": self.cfg.balance * balance_term(u),
                 "decorrelation": self.cfg.decorrelate * decorrelation_term(u)}
        return z, terms
