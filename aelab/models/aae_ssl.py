"""The semi-supervised adversarial autoencoder (Makhzani et al. 2015, section 5).

The encoder q(y, z|x) gives a categorical y (softmax over K classes) and a style z (d units); the
decoder rebuilds the image from [y, z]. Two discriminators hold the codes to their priors: one tells
y from one-hot samples of Cat(K), the other z from N(0, I). Each engine step takes the paper's
phases in order, one player each (the engine gives each its own optimiser):
  "ae"             reconstruction: BCE of decoder(encoder(x + noise)) against x  -> encoder + decoder
  "discriminator"  prior samples (real) against the encoder's y and z (fake)     -> both discriminators
  "generator"      the encoder fools both discriminators                          -> encoder
  "classifier"     cross-entropy of q(y|x) on a labelled batch                    -> encoder's trunk + y head
The engine's batch is the unlabelled data; the labelled batch comes from the pool (semi_common).
`encode` gives the style z; `generate(z, y)` draws class y in style z (the style/class figure).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Player, register
from .blocks import mlp, numel
from .semi_common import SemiConfig, SemiSupervised


@dataclass
class AAESSLConfig(SemiConfig):
    latent_dim: int = 10  # the style z
    hidden: tuple[int, ...] = (1000, 1000)  # encoder and decoder (the paper's two layers of 1000)
    disc_hidden: tuple[int, ...] = (1000, 1000)  # each discriminator
    noise: float = 0.3  # gaussian noise on the encoder's input in the reconstruction phase
    adv_lr_scale: float = 1.0  # the discriminators' and the generator's learning rate / train.lr

    def check(self) -> None:
        super().check()
        if min((*self.hidden, *self.disc_hidden), default=1) <= 0 or self.noise < 0 or self.adv_lr_scale <= 0:
            raise ConfigError("model.hidden and model.disc_hidden must be positive, model.noise >= 0, "
                              "model.adv_lr_scale > 0")


@register("aae-ssl")
class AAESSL(SemiSupervised):
    Config = AAESSLConfig

    def __init__(self, cfg: AAESSLConfig, input_shape, num_classes=10):
        super().__init__(cfg, input_shape, num_classes)
        n, k, d = numel(input_shape), num_classes, cfg.latent_dim
        self.trunk = mlp([n, *cfg.hidden], last_act="relu")
        self.y_head, self.z_head = nn.Linear(cfg.hidden[-1], k), nn.Linear(cfg.hidden[-1], d)
        self.decoder = nn.Sequential(mlp([k + d, *cfg.hidden[::-1], n], last_act="none"), nn.Unflatten(1, input_shape))
        self.d_cat, self.d_style = mlp([k, *cfg.disc_hidden, 1]), mlp([d, *cfg.disc_hidden, 1])

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> class logits (B, K), style (B, d)."""
        h = self.trunk(x.flatten(1))
        return self.y_head(h), self.z_head(h)

    def players(self) -> list[Player]:
        enc = [*self.trunk.parameters(), *self.y_head.parameters(), *self.z_head.parameters()]
        s = self.cfg.adv_lr_scale
        return [Player("ae", enc + list(self.decoder.parameters())),
                Player("discriminator", [*self.d_cat.parameters(), *self.d_style.parameters()], lr_scale=s),
                Player("generator", enc, lr_scale=s),
                Player("classifier", [*self.trunk.parameters(), *self.y_head.parameters()])]

    def forward(self, batch: dict[str, torch.Tensor], player: str = "ae") -> dict[str, torch.Tensor]:
        return getattr(self, f"_{player}")(batch)

    def _ae(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        noisy = x + self.cfg.noise * torch.randn_like(x) if self.cfg.noise else x
        logits, z = self.codes(noisy)
        recon = self.recon_loss(self.decoder(torch.cat([torch.softmax(logits, 1), z], 1)), x)
        return {"loss": recon, "recon": recon}

    def _prior(self, n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """n one-hot draws of Cat(K) and n draws of N(0, I): the discriminators' real samples."""
        y = F.one_hot(torch.randint(self.num_classes, (n,), device=like.device), self.num_classes).to(like.dtype)
        return y, torch.randn(n, self.cfg.latent_dim, device=like.device, dtype=like.dtype)

    def _discriminator(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        with torch.no_grad():
            logits, z = self.codes(x)
        y_real, z_real = self._prior(x.shape[0], z)
        terms = {}
        for name, d, real, fake in (("cat", self.d_cat, y_real, torch.softmax(logits, 1)), ("style", self.d_style, z_real, z)):
            r, f = d(real).float(), d(fake).float()
            terms[f"d_{name}"] = (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                                  + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)))
        return {"loss": terms["d_cat"] + terms["d_style"], **terms}

    def _generator(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, z = self.codes(batch["x"])
        fc, fs = self.d_cat(torch.softmax(logits, 1)).float(), self.d_style(z).float()
        g_cat = F.binary_cross_entropy_with_logits(fc, torch.ones_like(fc))
        g_style = F.binary_cross_entropy_with_logits(fs, torch.ones_like(fs))
        return {"loss": g_cat + g_style, "g_cat": g_cat, "g_style": g_style}

    def _classifier(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = self.labelled(batch)
        ce = self.masked_ce(self.codes(x)[0], y)
        return {"loss": ce, "ce": ce}

    # -- evaluation
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.codes(x)[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.codes(x)[1]

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Image logits of style z (B, d) and classes y (B,); y=None: every class alike (1/K each)."""
        k = self.num_classes
        y1h = F.one_hot(y, k).to(z.dtype) if y is not None else z.new_full((z.shape[0], k), 1.0 / k)
        return self.decoder(torch.cat([y1h, z], 1))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        logits, z = self.codes(x)
        return self.decoder(torch.cat([torch.softmax(logits, 1), z], 1))

    @torch.no_grad()
    def generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Image logits of classes y (B,) in styles z (B, d)."""
        return self.decode(z, y)
