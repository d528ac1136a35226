"""Stochastic binary codes (Stochastic Generative Hashing, Dai et al. ICML 2017): while training,
each bit is drawn h ~ Bernoulli(sigmoid(a)) and the decoder reconstructs from the sampled bits.

SGH's distributional derivative of h = 1[sigmoid(a) >= xi], xi ~ U(0, 1), passes the gradient to the
probability unchanged, which is the straight-through estimator on the probability: z = p + (h - p)
with (h - p) held constant. Sampling makes a code that sits near p = 1/2 useless to the decoder, so
training pushes each unit to a confident bit without the noise scale `semhash` needs; an optional
balance term (weight `balance`) asks each bit to be on for half the batch. Evaluation uses the
deterministic bits p > 1/2 (a > 0), as SGH does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import register
from .hash_ste import balance_term
from .hashing import SemanticHashAE, SemHashConfig


@dataclass
class HashSGHConfig(SemHashConfig):
    noise_std: float = 0.0  # unused: the sampling is the noise
    balance: float = 0.0  # weight of the bit-balance term on 2p - 1

    def check(self) -> None:
        super().check()
        if self.balance < 0:
            raise ConfigError("model.balance must be >= 0")


@register("hash-sgh")
class StochasticHashAE(SemanticHashAE):
    Config = HashSGHConfig

    def code(self, a: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = torch.sigmoid(a)
        if not self.training:
            return (a > 0).to(p.dtype), {}
        h = (torch.rand_like(p) < p).to(p.dtype)  # one Bernoulli draw per bit
        z = p + (h - p).detach()
        return z, {"balance": self.cfg.balance * balance_term(2 * p - 1)}
