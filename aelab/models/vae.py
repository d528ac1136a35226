"""Variational autoencoder (Kingma & Welling 2014), optionally beta-weighted (Higgins et al. 2017).

q(z|x) = N(mu, diag(exp(logvar))), p(z) = N(0, I), p(x|z) Bernoulli on the decoder's logits or
Gaussian with mean sigmoid(logits) and one learned sigma. All terms are nats per image; Gaussian
ones are densities on [0, 1] pixels, so they do not compare with Bernoulli numbers.
`iw_nll` is the importance-weighted bound of Burda et al. (2016), tighter than the ELBO as k grows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .. import losses
from ..errors import ConfigError
from .base import AEConfig, Autoencoder, register
from .blocks import Flatten, Unflatten, conv_decoder, conv_encoder, mlp, numel


@dataclass
class VAEConfig(AEConfig):
    latent_dim: int = 16
    arch: Literal["conv", "dense"] = "conv"
    channels: tuple[int, ...] = (32, 64, 128)  # conv: one strided conv per entry
    hidden: tuple[int, ...] = (512, 256)  # dense: MLP widths; the decoder mirrors them
    activation: Literal["relu", "leaky_relu", "gelu"] = "relu"
    batchnorm: bool = True  # conv only
    beta: float = 1.0  # weight of the KL term in the loss (1 = the ELBO)
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"  # replaces `recon` for the VAE

    def check(self) -> None:
        super().check()
        if self.recon != "bce":
            raise ConfigError("model.recon does not apply to the VAE; set model.likelihood=gaussian")
        if self.beta < 0:
            raise ConfigError("model.beta must be >= 0")
        if not self.channels or min(self.channels) <= 0 or min(self.hidden, default=1) <= 0:
            raise ConfigError("model.channels and model.hidden must hold positive sizes")


@register("vae")
class VAE(Autoencoder):
    Config = VAEConfig

    def __init__(self, cfg: VAEConfig, input_shape, num_classes=10):
        super().__init__(cfg, input_shape, num_classes)
        d, act = cfg.latent_dim, cfg.activation
        if cfg.arch == "conv":
            self.encoder, sizes = conv_encoder(input_shape, cfg.channels, 2 * d, act, cfg.batchnorm)
            self.decoder = conv_decoder(input_shape, cfg.channels, sizes, d, act, cfg.batchnorm)
        else:
            n = numel(input_shape)
            self.encoder = nn.Sequential(Flatten(), mlp([n, *cfg.hidden, 2 * d], act))
            self.decoder = nn.Sequential(mlp([d, *cfg.hidden[::-1], n], act), Unflatten(input_shape))
        if cfg.likelihood == "gaussian":  # only then: an unused parameter would get no gradient
            self.log_sigma = nn.Parameter(torch.zeros(()))
        self.eval_iw_samples = 0  # set by the evaluation code (eval.iw_samples); 0 = no iw_nll

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> mu, logvar, each (B, latent_dim), in fp32 (exp(logvar) under autocast)."""
        mu, logvar = self.encoder(x).float().chunk(2, dim=1)
        return mu, logvar

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]  # the mean code: deterministic features and reconstructions

    def nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) in nats per image: (B, C, H, W) -> (B,)."""
        if self.cfg.likelihood == "gaussian":
            return losses.gaussian_nll(torch.sigmoid(logits.float()), x, self.log_sigma)
        return losses.bce_logits(logits, x)

    def recon_loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.nll(logits, x).mean()

    def forward(self, batch: dict[str, torch.Tensor], player: str = "model") -> dict[str, torch.Tensor]:
        mu, logvar = self.posterior(batch["x_in"])
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparameterised sample (B, D)
        recon = self.recon_loss(self.decode(z), batch["x"])
        kl = losses.kl_normal(mu, logvar).mean()
        return {"loss": recon + self.cfg.beta * kl, "recon": recon, "kl": kl, "nelbo": recon + kl}

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images (n, C, H, W) in [0, 1]: the decoder's mean at codes drawn from the prior."""
        dev = self._device()
        z = torch.randn(n, self.cfg.latent_dim, generator=generator,
                        device=generator.device if generator is not None else dev)
        return torch.sigmoid(self.decode(z.to(dev)).float())

    @torch.no_grad()
    def iw_nll(self, x: torch.Tensor, k: int, max_images: int = 4096) -> torch.Tensor:
        """Importance-weighted estimate of -log p(x) in nats, (B, C, H, W) -> (B,).

        -log (1/k) sum_s p(x, z_s) / q(z_s|x), z_s ~ q(z|x). Samples are decoded `max_images`
        images at a time, so only the (k, B) log-weights grow with k. Call in eval mode.
        """
        mu, logvar = self.posterior(x)  # (B, D)
        m = max(1, max_images // x.shape[0])  # samples per chunk
        zeros = torch.zeros_like(mu)
        log_w = []
        for start in range(0, k, m):
            s = min(m, k - start)
            z = mu + torch.randn(s, *mu.shape, device=mu.device) * torch.exp(0.5 * logvar)  # (s, B, D)
            logits = self.decode(z.flatten(0, 1))  # (s*B, C, H, W)
            target = x.expand(s, *x.shape).flatten(0, 1)
            log_px = -self.nll(logits, target).view(s, -1)  # (s, B)
            log_w.append(log_px + losses.log_normal(z, zeros, zeros) - losses.log_normal(z, mu, logvar))
        return math.log(k) - torch.logsumexp(torch.cat(log_w), dim=0)

    @torch.no_grad()
    def metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().metrics(batch)
        if self.eval_iw_samples > 0:  # costly (k decoder passes per image): only when asked
            out["iw_nll"] = self.iw_nll(batch["x"], self.eval_iw_samples).mean()
        return out
