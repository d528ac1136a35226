"""Semantic-hashing autoencoder (Salakhutdinov & Hinton 2009): a stacked MLP whose code is a layer of
logistic units with Gaussian noise added to their inputs during training.

The noise (std `noise_std`, zero mean) makes small differences of a unit's total input meaningless to
the decoder, so training drives the inputs far from zero and the codes saturate near 0 or 1: they
round to bits with little loss. `encode` returns the noiseless probabilities sigmoid(a) in [0, 1]
(B, latent_dim); `hash_bits` rounds them. Default 784-512-256-32 for 28x28 images; `latent_dim` is the
bit count (16, 32, 64 ...). Used by the `hashing` study.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from .base import AEConfig, Autoencoder, register
from .blocks import Flatten, Unflatten, mlp, numel


@dataclass
class SemHashConfig(AEConfig):
    latent_dim: int = 32  # bits of the hash
    hidden: tuple[int, ...] = (512, 256)  # encoder widths below the code; the decoder mirrors them
    activation: Literal["relu", "sigmoid", "tanh", "leaky_relu", "gelu"] = "relu"
    noise_std: float = 4.0  # std of the Gaussian noise on the code layer's inputs while training

    def check(self) -> None:
        super().check()
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ConfigError("model.hidden must hold positive sizes")
        if self.noise_std < 0:
            raise ConfigError("model.noise_std must be >= 0")


@register("semhash")
class SemanticHashAE(Autoencoder):
    Config = SemHashConfig

    def __init__(self, cfg: SemHashConfig, input_shape, num_classes=10):
        super().__init__(cfg, input_shape, num_classes)
        n, act = numel(input_shape), cfg.activation
        # the last encoder layer is linear: it gives the code units' total inputs (pre-sigmoid)
        self.encoder = nn.Sequential(Flatten(), mlp([n, *cfg.hidden, cfg.latent_dim], act))
        self.decoder = nn.Sequential(mlp([cfg.latent_dim, *cfg.hidden[::-1], n], act), Unflatten(input_shape))

    def code_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the code units' total inputs (B, latent_dim), before the logistic."""
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.code_inputs(x))  # noiseless probabilities in [0, 1]

    @torch.no_grad()
    def hash_bits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> bool bits (B, latent_dim): the codes rounded at 0.5."""
        return self.code_inputs(x) > 0

    def forward(self, batch: dict[str, torch.Tensor], player: str = "model") -> dict[str, torch.Tensor]:
        a = self.code_inputs(batch["x_in"])
        if self.training and self.cfg.noise_std > 0:  # noise only while training; evaluation is clean
            a = a + self.cfg.noise_std * torch.randn_like(a)
        z = torch.sigmoid(a)
        recon = self.recon_loss(self.decode(z), batch["x"])
        # how far the codes are from bits: mean |z - round(z)|, 0 when saturated (logged, not trained)
        gap = (z - z.round()).abs().mean().detach().float()
        return {"loss": recon, "recon": recon, "bit_gap": gap}
