"""Loss terms as pure functions of tensors. Reconstruction terms are per image: (B,) in, (B,) out.

Decoders output logits, so BCE is `binary_cross_entropy_with_logits` (stable, autocast-safe; STYLE 16).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bce_logits(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood in nats per image: (B, ...) -> (B,)."""
    return F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none").flatten(1).sum(1)


def mse_logits(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared error of sigmoid(logits) against x, summed per image: (B, ...) -> (B,)."""
    return (torch.sigmoid(logits.float()) - x.float()).square().flatten(1).sum(1)


def mse(pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared error summed per example, no squashing (linear outputs, hidden codes): (B, ...) -> (B,)."""
    return (pred.float() - x.float()).square().flatten(1).sum(1)


def gaussian_nll(mean: torch.Tensor, x: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood in nats per image, with a learned scalar log sigma: (B,)."""
    se = (mean.float() - x.float()).square().flatten(1)
    return (0.5 * se * torch.exp(-2 * log_sigma) + log_sigma + 0.5 * math.log(2 * math.pi)).sum(1)


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example in nats: (B, D) -> (B,)."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).square() / logvar.exp()).sum(-1)


def l1_codes(z: torch.Tensor) -> torch.Tensor:
    """Summed absolute code activation per example: (B, D) -> (B,)."""
    return z.abs().sum(1)


def kl_sparsity(z: torch.Tensor, rho: float, eps: float = 1e-6) -> torch.Tensor:
    """KL(rho || rho_hat) summed over units, rho_hat = the batch mean of sigmoid-range codes (scalar)."""
    rho_hat = z.mean(0).clamp(eps, 1 - eps)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()
