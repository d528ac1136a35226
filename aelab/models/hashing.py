"""Semantic-hashing autoencoder (Salakhutdinov & Hinton 2009): a stacked MLP whose code is a layer of
logistic units with Gaussian noise added to their inputs during training.

The noise (std `noise_std`, zero mean) makes small differences of a unit's total input meaningless to
the decoder, so training drives the inputs far from zero and the codes saturate near 0 or 1: they
round to bits with little loss. `encode` returns the noiseless probabilities sigmoid(a) in [0, 1]
(B, latent_dim); `hash_bits` rounds them. Default 784-512-256-32 for 28x28 images; `latent_dim` is the
bit count (16, 32, 64 ...). Used by the `hashing` study.

`SemanticHashAE` is also the base of the other binary-code autoencoders (`hash-ste`, `hash-bihalf`,
`hash-sgh`): they share its encoder, decoder, `encode` and `hash_bits` (bit = code input > 0) and
override only `code(a)`, which turns the code inputs into what the decoder sees while training, plus
the extra loss terms of that method.
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
        return torch.sigmoid(self.code_inputs(x))  # noiseless probabilities in [0, 1]; > 0.5 is the bit

    @torch.no_grad()
    def hash_bits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> bool bits (B, latent_dim): the codes rounded at 0.5."""
        return self.code_inputs(x) > 0

    def code(self, a: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Code inputs (B, K) -> (what the decoder sees (B, K) in [0, 1], {name: extra loss term}).

        Here: the logistic of the inputs plus Gaussian noise while training; the clean logistic else.
        """
        if self.training and self.cfg.noise_std > 0:  # noise only while training; evaluation is clean
            a = a + self.cfg.noise_std * torch.randn_like(a)
        return torch.sigmoid(a), {}

    def forward(self, batch: dict[str, torch.Tensor], player: str = "model") -> dict[str, torch.Tensor]:
        a = self.code_inputs(batch["x_in"])
        z, terms = self.code(a)
        recon = self.recon_loss(self.decode(z), batch["x"])
        loss = recon + sum(terms.values()) if terms else recon
        # how far the decoder's codes are from bits: mean |z - round(z)|, 0 when saturated (logged only)
        gap = (z - z.round()).abs().mean().detach().float()
        # the bits' balance: mean |P(bit = 1) - 1/2| over the batch, 0 when every bit splits half/half
        balance = ((a > 0).float().mean(0) - 0.5).abs().mean().detach()
        return {"loss": loss, "recon": recon, "bit_gap": gap, "bit_imbalance": balance,
                **{k: v.detach() for k, v in terms.items()}}
