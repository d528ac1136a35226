"""Shared Encoding Network (seed 003): one sigmoid embedding shared by an autoencoder, a GAN and a classifier.

Five networks meet at the embedding e = sigmoid(dense(conv^3(x))) of size d (`latent_dim`):
  encoder  image -> e;   decoder  e -> image logits (transposed convs);
  generator  noise (+ a one-hot class when `directed`) -> e (a few dense layers, sigmoid);
  discriminator  e -> real/fake logit;   classifier  e -> class logits (a small head).
Four players, each with its own optimiser in the engine, take their rounds in this order:
  "ae"            denoising AE on augmented (rotate/shift/flip) and noised images -> encoder + decoder
  "generator"     `route="routed"`: G -> decoder -> encoder -> D (the seed's route); `"direct"`: G -> D.
                  Directed: + CE(classifier(e_fake), class asked for)            -> generator
  "discriminator" real = encoder(clean, unaugmented x), fake = the generator's embeddings -> D
                  (+ the encoder when routed and `gan_trains_encoder`: the GAN then shapes the embedding)
  "classifier"    CE on labelled images (+ pseudo-labels)                        -> encoder + classifier
Approximations of "each round on its own batch" (the engine hands every player the same batch):
augmentation and noise are drawn inside the model (the engine's `data.rotate/...` and `train.corrupt`
stay off), so the AE round sees a fresh augmented+noised view while the discriminator sees the clean
batch. With 100 labels among 54k images a random batch holds ~0 labelled rows, so the classifier
round draws its own `clf_batch` labelled images from a pool the study hands over with `set_pool`
(non-persistent uint8 buffers: data, not weights), plus any labelled rows of the engine's batch.
Pseudo-labels (seed: "giving it the correct answers as the argmax of its final output"): unlabelled
rows whose max softmax >= `pl_threshold` join the loss with weight pl_weight * ramp, the ramp going
0 -> 1 over `pl_ramp` classifier steps after `pl_start`; the step count is a persistent buffer, so a
resumed run continues the schedule exactly. forward() makes no host sync (no `.item()`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import augment
from ..errors import ConfigError
from .base import AEConfig, Autoencoder, Player, register
from .blocks import Flatten, activation, conv_decoder


@dataclass
class SENConfig(AEConfig):
    latent_dim: int = 32  # d: the shared sigmoid embedding
    channels: tuple[int, ...] = (32, 64, 128)  # the seed's three strided convs
    activation: Literal["leaky_relu", "relu", "gelu"] = "leaky_relu"
    batchnorm: bool = True  # encoder and decoder ("significantly helps")
    dropout: float = 0.1  # after each encoder layer and in the G/D/classifier heads
    noise_dim: int = 32  # generator input
    hidden: int = 128  # width of the generator / discriminator / classifier layers
    route: Literal["routed", "direct"] = "routed"
    gan_trains_encoder: bool = True  # routed only: the discriminator round also steps the encoder
    directed: bool = True  # one-hot class into the generator, classifier verdict in its loss
    directed_weight: float = 1.0
    noise: float = 0.2  # AE round: gaussian input noise sigma
    rotate: float = 15.0  # AE/classifier rounds: max rotation, degrees (0 = off)
    shift: int = 0  # max shift, pixels
    hflip: bool = False  # random horizontal flips: wrong for digits, fine for clothes
    ae_round: bool = True  # ablation switches: which rounds (players) take part
    gan_round: bool = True
    clf_round: bool = True
    clf_batch: int = 64  # labelled images drawn from the pool per classifier step
    pseudo: bool = False  # pseudo-labels on the batch's unlabelled rows
    pl_threshold: float = 0.95
    pl_weight: float = 1.0
    pl_start: int = 200  # classifier steps before pseudo-labels count at all
    pl_ramp: int = 500  # steps over which their weight ramps 0 -> pl_weight

    def check(self) -> None:
        super().check()
        if len(self.channels) != 3 or min(self.channels) <= 0:
            raise ConfigError("model.channels must be three positive sizes (the seed's three convs)")
        if not 0 <= self.dropout < 1 or not 0 <= self.pl_threshold <= 1:
            raise ConfigError("model.dropout must be in [0, 1) and model.pl_threshold in [0, 1]")
        if min(self.noise_dim, self.hidden, self.clf_batch) <= 0 or self.pl_ramp < 0 or self.pl_start < 0:
            raise ConfigError("model.noise_dim, hidden, clf_batch must be > 0; pl_start, pl_ramp >= 0")
        if not (self.ae_round or self.gan_round or self.clf_round):
            raise ConfigError("model: at least one of ae_round, gan_round, clf_round must be on")


def _encoder(shape: tuple[int, int, int], cfg: SENConfig) -> tuple[nn.Sequential, list[tuple[int, int]]]:
    """Three strided 3x3 convs (BN, activation, dropout), then dense -> sigmoid embedding (B, d)."""
    c, h, w = shape
    layers: list[nn.Module] = []
    sizes = [(h, w)]
    for ch in cfg.channels:
        layers += [nn.Conv2d(c, ch, 3, stride=2, padding=1, bias=not cfg.batchnorm)]
        layers += ([nn.BatchNorm2d(ch)] if cfg.batchnorm else []) + [activation(cfg.activation)]
        layers += [nn.Dropout(cfg.dropout)] if cfg.dropout else []
        c, h, w = ch, (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return nn.Sequential(*layers, Flatten(), nn.Linear(c * h * w, cfg.latent_dim), nn.Sigmoid()), sizes


def _head(sizes: list[int], cfg: SENConfig, last: str = "none") -> nn.Sequential:
    """Dense layers with dropout after each hidden activation."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        hidden = i < len(sizes) - 2
        layers += [nn.Linear(a, b), activation(cfg.activation if hidden else last)]
        layers += [nn.Dropout(cfg.dropout)] if hidden and cfg.dropout else []
    return nn.Sequential(*layers)


@register("sen")
class SEN(Autoencoder):
    Config = SENConfig

    def __init__(self, cfg: SENConfig, input_shape, num_classes=10):
        super().__init__(cfg, input_shape, num_classes)
        d, h, k = cfg.latent_dim, cfg.hidden, num_classes
        self.encoder, sizes = _encoder(self.input_shape, cfg)
        self.decoder = conv_decoder(self.input_shape, cfg.channels, sizes, d, cfg.activation, cfg.batchnorm)
        self.generator = _head([cfg.noise_dim + (k if cfg.directed else 0), h, h, d], cfg, "sigmoid")
        self.discriminator = _head([d, h, 1], cfg)
        self.classifier = _head([d, h, k], cfg)
        self.register_buffer("pool_x", torch.zeros(0, *self.input_shape, dtype=torch.uint8), persistent=False)
        self.register_buffer("pool_y", torch.zeros(0, dtype=torch.int64), persistent=False)
        self.register_buffer("clf_steps", torch.zeros((), dtype=torch.int64))  # the pseudo-label clock

    def set_pool(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The labelled images (N, C, H, W) uint8 and labels (N,) the classifier round samples from."""
        if x.dtype != torch.uint8 or x.shape[1:] != self.input_shape or len(x) != len(y) or (y < 0).any():
            raise ConfigError("set_pool needs uint8 images of the model's shape and their non-negative labels")
        self.pool_x, self.pool_y = x.to(self.clf_steps.device), y.to(self.clf_steps.device)

    def players(self) -> list[Player]:
        c, out = self.cfg, []
        enc = list(self.encoder.parameters())
        if c.ae_round:
            out.append(Player("ae", enc + list(self.decoder.parameters())))
        if c.gan_round:
            out.append(Player("generator", list(self.generator.parameters())))
            shared = enc if c.route == "routed" and c.gan_trains_encoder else []
            out.append(Player("discriminator", list(self.discriminator.parameters()) + shared))
        if c.clf_round:
            out.append(Player("classifier", enc + list(self.classifier.parameters())))
        return out

    def forward(self, batch: dict[str, torch.Tensor], player: str = "ae") -> dict[str, torch.Tensor]:
        return getattr(self, f"_{player}_round")(batch)

    # -- the rounds
    def view(self, x: torch.Tensor) -> torch.Tensor:
        """An augmented view (random rotation / shift / flip per image) of images (B, C, H, W)."""
        c = self.cfg
        return augment(x, c.rotate, c.shift, c.hflip)

    def view_noise(self, x: torch.Tensor) -> torch.Tensor:
        """The AE round's noised input: gaussian sigma `noise`, clipped to [0, 1]."""
        return (x + self.cfg.noise * torch.randn_like(x)).clamp(0, 1) if self.cfg.noise else x

    def _ae_round(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.view(batch["x"])
        recon = self.recon_loss(self.decode(self.encode(self.view_noise(x))), x)
        return {"loss": recon, "recon": recon}

    def sample_codes(self, n: int, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Generated embeddings (n, d) and the classes asked for (n,) (random unless given)."""
        dev = self.clf_steps.device
        z = torch.randn(n, self.cfg.noise_dim, device=dev)
        y = torch.randint(self.num_classes, (n,), device=dev) if labels is None else labels.to(dev)
        if self.cfg.directed:
            z = torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], 1)
        return self.generator(z), y

    def fake_codes(self, e: torch.Tensor) -> torch.Tensor:
        """What the discriminator and classifier see of generated embeddings: routed re-encodes the image."""
        return self.encode(torch.sigmoid(self.decode(e))) if self.cfg.route == "routed" else e

    def _generator_round(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        e, y = self.sample_codes(batch["x"].shape[0])
        fake = self.fake_codes(e)
        logit = self.discriminator(fake).float()
        adv = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
        out = {"adv": adv}
        loss = adv
        if self.cfg.directed:
            out["directed"] = F.cross_entropy(self.classifier(fake).float(), y)
            loss = loss + self.cfg.directed_weight * out["directed"]
        return {"loss": loss, **out}

    def _discriminator_round(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            e, _ = self.sample_codes(batch["x"].shape[0])
            img = torch.sigmoid(self.decode(e))
        fake = self.encode(img) if self.cfg.route == "routed" else e
        real = self.discriminator(self.encode(batch["x"])).float()  # clean, unaugmented
        fake = self.discriminator(fake).float()
        loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        return {"loss": loss, "d_real": torch.sigmoid(real).mean(), "d_fake": torch.sigmoid(fake).mean()}

    def _classifier_round(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch["x"], batch["y"]
        if self.pool_y.numel():  # the pool's size is fixed for a run: a static branch
            idx = torch.randint(self.pool_y.numel(), (self.cfg.clf_batch,), device=x.device)
            x, y = torch.cat([self.pool_x[idx].to(x.dtype) / 255, x]), torch.cat([self.pool_y[idx], y])
        logits = self.classifier(self.encode(self.view(x))).float()
        known = y >= 0
        ce = F.cross_entropy(logits, y.clamp(min=0), reduction="none")
        sup = (ce * known).sum() / known.sum().clamp(min=1)
        out = {"sup": sup}
        loss = sup
        if self.cfg.pseudo:
            pl, used = self.pseudo_loss(logits, ~known)
            loss = loss + self.pl_weight_now() * pl
            out.update(pseudo=pl, pl_used=used)
        if self.training:
            self.clf_steps.add_(1)
        return {"loss": loss, **out}

    def pl_weight_now(self) -> torch.Tensor:
        """pl_weight * clamp((steps - pl_start) / pl_ramp, 0, 1), as a device tensor (no sync)."""
        c = self.cfg
        t = (self.clf_steps.float() - c.pl_start) / max(c.pl_ramp, 1)
        return c.pl_weight * t.clamp(0, 1) if c.pl_ramp else c.pl_weight * (t >= 0).float()

    def pseudo_loss(self, logits: torch.Tensor, unlabelled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CE against the network's own confident argmax on unlabelled rows; and the fraction used."""
        conf, guess = torch.softmax(logits.detach(), 1).max(1)
        mask = (unlabelled & (conf >= self.cfg.pl_threshold)).float()
        ce = F.cross_entropy(logits, guess, reduction="none")
        return (ce * mask).sum() / unlabelled.sum().clamp(min=1), mask.sum() / unlabelled.sum().clamp(min=1)

    # -- evaluation
    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K) of clean images."""
        return self.classifier(self.encode(x))

    @torch.no_grad()
    def generate(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (n, C, H, W) of generated images (of the classes `labels` when directed)."""
        return self.decode(self.sample_codes(n, labels)[0])

    @torch.no_grad()
    def metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.reconstruct(batch["x"]).float()
        bce = F.binary_cross_entropy_with_logits(logits, batch["x"], reduction="none").flatten(1).sum(1).mean()
        out = {"loss": bce, "mse": F.mse_loss(torch.sigmoid(logits), batch["x"]), "bce": bce}
        known = batch["y"] >= 0
        hit = (self.classify(batch["x"]).argmax(1) == batch["y"]) & known
        out["acc"] = hit.sum() / known.sum().clamp(min=1)
        return out
