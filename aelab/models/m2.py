"""Kingma et al. 2014's semi-supervised VAE, M2: the class y is a latent for unlabelled images.

Generative model p(y) p(z) p(x|y,z), with p(y) uniform over K classes and p(z) = N(0, I); inference
q(y|x) (the classifier) and q(z|x,y). A labelled image costs -ELBO(x, y) = -log p(x|y,z) + KL(q(z|x,y)
|| p(z)) - log p(y); an unlabelled one sums over the classes, U(x) = sum_y q(y|x) (-ELBO(x, y)) -
H(q(y|x)), every class in one batched pass. The classifier also minimises alpha * (N / N_l) * CE on
the labelled images (the paper's alpha = 0.1 N, here per batch mean: N / N_l is the number of
training images per label, given with `set_pool`). `input="codes"` is M1+M2: M2 models the codes z1
of a trained VAE (M1, the `vae` model, dense; its weights are copied in with `load_m1` and frozen),
with a Gaussian p(z1|y,z); z1 is sampled from q(z1|x) while training (the paper's M1 features), its
mean at test. `encode` gives the mean of q(z|x, argmax q(y|x)); `generate(z, y)` draws class y in
style z (one row per class with the style held fixed: the paper's Figure 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .. import losses
from ..errors import ConfigError
from .base import Player, register
from .blocks import mlp, numel
from .semi_common import SemiConfig, SemiSupervised
from .vae import VAE, VAEConfig


@dataclass
class M2Config(SemiConfig):
    latent_dim: int = 50  # z: the style (the paper's 50)
    hidden: tuple[int, ...] = (500,)  # each MLP's hidden layers (the paper: one of 500)
    activation: Literal["softplus", "relu"] = "softplus"  # the paper's softplus
    alpha: float = 0.1  # the classifier's weight: alpha * (training images per label) * CE
    input: Literal["pixels", "codes"] = "pixels"  # codes: M1+M2 on a VAE's codes
    m1_latent: int = 50  # M1: the VAE's code size (the paper's 50) ...
    m1_hidden: tuple[int, ...] = (600, 600)  # ... and its MLP widths (two of 600)

    def check(self) -> None:
        super().check()
        if min(self.hidden, default=1) <= 0 or min(self.m1_hidden, default=1) <= 0 or self.m1_latent <= 0:
            raise ConfigError("model.hidden, model.m1_hidden and model.m1_latent must be positive")
        if self.alpha < 0:
            raise ConfigError("model.alpha must be >= 0")


@register("m2")
class M2(SemiSupervised):
    Config = M2Config

    def __init__(self, cfg: M2Config, input_shape, num_classes=10):
        super().__init__(cfg, input_shape, num_classes)
        k, d, h, act = num_classes, cfg.latent_dim, list(cfg.hidden), cfg.activation
        if cfg.input == "codes":
            self.m1 = VAE(VAEConfig(name="vae", arch="dense", latent_dim=cfg.m1_latent, hidden=cfg.m1_hidden),
                          input_shape, num_classes).requires_grad_(False)
        n = cfg.m1_latent if cfg.input == "codes" else numel(input_shape)
        out = 2 * n if cfg.input == "codes" else n  # Gaussian mean and log-variance of z1, or pixel logits
        self.classifier = mlp([n, *h, k], act)  # q(y|x)
        self.encoder = mlp([n + k, *h, 2 * d], act)  # q(z|x,y)
        self.decoder = mlp([d + k, *h, out], act)  # p(x|y,z)
        self.log_k = math.log(num_classes)

    def players(self) -> list[Player]:
        return [Player("model", [p for p in self.parameters() if p.requires_grad])]  # M1 stays frozen

    def load_m1(self, vae: VAE) -> None:
        """Copy a trained VAE's weights into M1 (input="codes")."""
        self.m1.load_state_dict(vae.state_dict())

    # -- features: pixels, or M1's codes
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> what M2 models (B, n): pixels, or z1 ~ q(z1|x) (its mean in eval mode)."""
        if self.cfg.input == "pixels":
            return x.flatten(1).float()
        with torch.no_grad():
            mu, logvar = self.m1.posterior(x)
            return mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu

    def neg_elbo(self, f: torch.Tensor, y1h: torch.Tensor) -> torch.Tensor:
        """-ELBO(x, y) per row (B,) in nats: features (B, n), one-hot (or soft) labels (B, K)."""
        mu, logvar = self.encoder(torch.cat([f, y1h], 1)).float().chunk(2, 1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.nll(self.decoder(torch.cat([z, y1h], 1)).float(), f) + losses.kl_normal(mu, logvar) + self.log_k

    def nll(self, out: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """-log p(f | y, z) per row: Bernoulli on pixels, Gaussian on M1's codes."""
        if self.cfg.input == "pixels":
            return F.binary_cross_entropy_with_logits(out, f, reduction="none").sum(1)
        mean, logvar = out.chunk(2, 1)
        return -losses.log_normal(f, mean, logvar.clamp(-8, 8))

    def forward(self, batch: dict[str, torch.Tensor], player: str = "model") -> dict[str, torch.Tensor]:
        k = self.num_classes
        xl, yl = self.labelled(batch)
        fl, fu = self.features(xl), self.features(batch["x"])
        known = (yl >= 0).float()
        lab = (self.neg_elbo(fl, F.one_hot(yl.clamp(min=0), k).float()) * known).sum() / known.sum().clamp(min=1)
        logits_l = self.classifier(fl).float()
        ce = self.masked_ce(logits_l, yl)
        # unlabelled: every class for every row in one pass, (K*B, ...) ordered class-major
        q = torch.softmax(self.classifier(fu).float(), 1)  # (B, K)
        eye = torch.eye(k, device=fu.device).repeat_interleave(fu.shape[0], 0)  # (K*B, K)
        per = self.neg_elbo(fu.repeat(k, 1), eye).view(k, -1).t()  # (B, K)
        unl = ((q * per).sum(1) + (q * torch.log(q + 1e-8)).sum(1)).mean()
        weight = self.cfg.alpha * self.images_per_label
        return {"loss": lab + unl + weight * ce, "labelled": lab, "unlabelled": unl, "ce": ce}

    # -- evaluation
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        y1h = F.one_hot(self.classifier(f).argmax(1), self.num_classes).to(f.dtype)
        return self.encoder(torch.cat([f, y1h], 1)).float().chunk(2, 1)[0]

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Image logits (B, C, H, W) of style z (B, D) and classes y (B,); y=None: every class alike."""
        k = self.num_classes
        y1h = F.one_hot(y, k).to(z.dtype) if y is not None else z.new_full((z.shape[0], k), 1.0 / k)
        out = self.decoder(torch.cat([z, y1h], 1))
        if self.cfg.input == "codes":  # M1's decoder draws the image of the mean code
            return self.m1.decode(out.float().chunk(2, 1)[0])
        return out.view(-1, *self.input_shape)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), self.classify(x).argmax(1))

    @torch.no_grad()
    def generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Image logits of classes y (B,) in styles z (B, D): hold z, vary y, for the style/class figure."""
        return self.decode(z, y)
