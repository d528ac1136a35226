"""A classifier with an adversarial decoder on its representation layer (the memorisation penalty).

Two players share one model (STYLE 5): the "decoder" rebuilds the input image from the *detached*
representation and minimises its reconstruction error R; the "classifier" (everything up to the
representation, and the head) minimises CE plus a term in R computed through the decoder, whose
gradients reach the decoder too but are zeroed by the engine before the decoder's own step, so
only the classifier's optimiser acts on them. `model.lam` sets the strength, `model.mode` the form:

  minus     CE - lam*R                 the seed's proposal (can be gamed: scramble the code)
  hinge     CE + lam*max(0, R* - R)    push R up only until the target error R*
  reversal  CE + R with a gradient-reversal layer (x -lam on the way back) before the decoder:
            the same classifier gradient as `minus`, but a bounded loss value
  plus      CE + lam*R                 the supervised autoencoder (Le et al. 2018): keep information

R is the per-pixel mean (MSE of sigmoid(logits), or BCE in nats), so lam trades nats of CE against
per-pixel error. `layernorm` bounds the code's scale; `dropout`, `vib_beta` (the Deep Variational
Information Bottleneck, Alemi et al. 2017) and `ce_weight=0` (a plain autoencoder through the same
encoder: the probe scale's reference) serve the memorisation study's baselines.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from ..errors import ConfigError
from .base import AEConfig, Autoencoder, Player, register
from .blocks import Flatten, conv_encoder, mlp, numel


@dataclass
class AdversarialConfig(AEConfig):
    latent_dim: int = 64  # width of the layer before the head (the default representation layer)
    recon: Literal["bce", "mse"] = "mse"  # R: per-pixel MSE (bounded) or BCE (nats per pixel)
    arch: Literal["cnn", "mlp"] = "cnn"
    channels: tuple[int, ...] = (16, 32)  # cnn: one strided 3x3 conv per entry
    hidden: int = 256  # mlp: width of the hidden layer
    rep_layer: Literal["penultimate", "body"] = "penultimate"  # body = the flattened conv / hidden output
    decoder_hidden: int = 256  # decoder capacity: width of its hidden layers
    decoder_depth: int = 2  # decoder capacity: linear layers (1 = a linear decoder)
    mode: Literal["minus", "hinge", "reversal", "plus"] = "minus"
    lam: float = 0.0  # strength of the R term (0 = plain classifier; the decoder still watches)
    warmup_steps: int = 0  # lam ramps linearly from 0 over this many classifier steps
    hinge_target: float = 0.06  # R* of the hinge, in R's units
    layernorm: bool = False  # LayerNorm (no affine) on the representation: its scale cannot blow up
    dropout: float = 0.0  # dropout on the representation before the head (baseline)
    vib_beta: float = 0.0  # >0: stochastic representation with beta*KL to N(0, I) (VIB baseline)
    ce_weight: float = 1.0  # 0 = a plain autoencoder through the same encoder
    decoder_every: int = 1  # the decoder takes its turn every k classifier steps ...
    decoder_steps: int = 1  # ... and then m optimiser steps
    decoder_lr_scale: float = 1.0

    def check(self) -> None:
        super().check()
        if min(self.channels, default=0) <= 0 or self.hidden <= 0 or self.decoder_hidden <= 0:
            raise ConfigError("model.channels, hidden and decoder_hidden must be positive")
        if self.decoder_depth < 1 or self.decoder_every < 1 or self.decoder_steps < 1:
            raise ConfigError("model.decoder_depth, decoder_every and decoder_steps must be >= 1")
        if self.warmup_steps < 0 or not 0 <= self.dropout < 1 or self.vib_beta < 0 or self.ce_weight < 0:
            raise ConfigError("model.warmup_steps, vib_beta, ce_weight must be >= 0 and dropout in [0, 1)")


class _Reverse(torch.autograd.Function):
    """Identity forward; the gradient times -scale backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return -scale * grad, None


@register("adversarial")
class AdversarialClassifier(Autoencoder):
    Config = AdversarialConfig
    has_decoder = False  # the decoder is the memorisation penalty's adversary, not a way back to images

    def __init__(self, cfg: AdversarialConfig, input_shape, num_classes=10):
        super().__init__(cfg, input_shape, num_classes)
        if cfg.arch == "cnn":
            body, _ = conv_encoder(input_shape, cfg.channels, 1)
            self.body = body[:-1]  # drop the final linear: (B, C*H*W) conv features
            width = self.body(torch.zeros(1, *input_shape)).shape[1]
        else:
            self.body, width = nn.Sequential(Flatten(), nn.Linear(numel(input_shape), cfg.hidden), nn.ReLU()), cfg.hidden
        vib = 2 if cfg.vib_beta > 0 else 1  # VIB: the layer gives mean and log-variance
        self.fc = nn.Linear(width, vib * cfg.latent_dim)
        self.head = nn.Linear(cfg.latent_dim, num_classes)
        self.rep_dim = cfg.latent_dim if cfg.rep_layer == "penultimate" else width
        self.norm = nn.LayerNorm(self.rep_dim, elementwise_affine=False) if cfg.layernorm else nn.Identity()
        self.decoder = nn.Sequential(mlp([self.rep_dim] + [cfg.decoder_hidden] * (cfg.decoder_depth - 1)
                                         + [numel(input_shape)]), nn.Unflatten(1, tuple(input_shape)))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))  # classifier steps: lam warm-up

    # -- the representation and the head
    def _penultimate(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Body features (B, W) -> (the layer before the head (B, latent_dim), VIB's KL), sampled under VIB."""
        z = self.fc(h)
        if self.cfg.vib_beta == 0:
            return F.relu(z), z.new_zeros(())
        mu, logvar = z.chunk(2, dim=1)
        kl = losses.kl_normal(mu.float(), logvar.float()).mean()
        return (mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu), kl

    def _forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> representation (B, rep_dim), class logits (B, classes), VIB's KL ()."""
        h = self.body(x)
        if self.cfg.rep_layer == "body":
            rep = self.norm(h)
            z, kl = self._penultimate(rep)
        else:
            z, kl = self._penultimate(h)
            rep = z = self.norm(z)
        return rep, self.head(F.dropout(z, self.cfg.dropout, self.training)), kl

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_all(x)[0]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, classes)."""
        return self._forward_all(x)[1]

    def recon_loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return super().recon_loss(logits, x) / x[0].numel()  # per pixel: lam's units do not scale with H*W

    def lam_now(self) -> torch.Tensor:
        """lam after the warm-up ramp, as a tensor (no host sync, no graph break)."""
        ramp = (self.step.float() / self.cfg.warmup_steps).clamp(max=1.0) if self.cfg.warmup_steps else 1.0
        return self.cfg.lam * torch.as_tensor(ramp, device=self.step.device)

    # -- the two players
    def players(self) -> list[Player]:
        dec = list(self.decoder.parameters())
        ids = {id(p) for p in dec}
        return [Player("classifier", [p for p in self.parameters() if id(p) not in ids]),
                Player("decoder", dec, every=self.cfg.decoder_every, steps=self.cfg.decoder_steps,
                       lr_scale=self.cfg.decoder_lr_scale)]

    def forward(self, batch: dict[str, torch.Tensor], player: str = "classifier") -> dict[str, torch.Tensor]:
        if player == "decoder":  # the decoder learns from a detached code: no graph through the encoder
            with torch.no_grad():
                rep = self._forward_all(batch["x_in"])[0]
            r = self.recon_loss(self.decoder(rep), batch["x"])
            return {"loss": r, "R": r}
        rep, logits, kl = self._forward_all(batch["x_in"])
        if self.training:
            self.step.add_(1)
        lam, cfg, y = self.lam_now(), self.cfg, batch["y"]
        ce = F.cross_entropy(logits.float(), y, ignore_index=-1)
        r = self.recon_loss(self.decoder(_Reverse.apply(rep, lam) if cfg.mode == "reversal" else rep), batch["x"])
        term = {"minus": -lam * r, "plus": lam * r, "reversal": r,
                "hinge": lam * F.relu(cfg.hinge_target - r)}[cfg.mode]
        if cfg.ce_weight == 0:  # the autoencoder reference: reconstruction only
            term = r
        loss = cfg.ce_weight * ce + term + cfg.vib_beta * kl
        acc = (logits.argmax(1) == y).float().sum() / (y >= 0).sum().clamp(min=1)
        return {"loss": loss, "ce": ce, "R": r, "acc": acc, "lam": lam}
