"""The single-hidden-layer autoencoder of seed 001: pixels -> code -> pixels (784 -> 32 -> 784)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from .base import AEConfig, Autoencoder, register
from .blocks import Flatten, Unflatten, activation, numel


@dataclass
class DenseConfig(AEConfig):
    latent_dim: int = 32
    activation: Literal["relu", "sigmoid", "tanh", "leaky_relu", "gelu", "none"] = "relu"


@register("dense")
class DenseAE(Autoencoder):
    Config = DenseConfig

    def __init__(self, cfg: DenseConfig, input_shape, num_classes=10):
        super().__init__(cfg, input_shape, num_classes)
        n = numel(input_shape)
        self.encoder = nn.Sequential(Flatten(), nn.Linear(n, cfg.latent_dim), activation(self.code_activation()))
        self.decoder = nn.Sequential(nn.Linear(cfg.latent_dim, n), Unflatten(input_shape))

    def code_activation(self) -> str:
        """Name of the code layer's activation; a variant that needs a fixed range overrides it."""
        return self.cfg.activation
