"""Convolutional autoencoder: strided convs down to a dense code, transposed convs back up.

Works for any input size and channel count (1x8x8 digits, 1x28x28 MNIST, 3x32x32 CIFAR-10): the
decoder lands exactly on the encoder's sizes (see `blocks.conv_decoder`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError
from .base import AEConfig, Autoencoder, register
from .blocks import conv_decoder, conv_encoder


@dataclass
class ConvConfig(AEConfig):
    channels: tuple[int, ...] = (32, 64, 128)  # one strided conv per entry, halving the size
    activation: Literal["relu", "leaky_relu", "gelu"] = "relu"
    batchnorm: bool = True

    def check(self) -> None:
        super().check()
        if not self.channels or min(self.channels) <= 0:
            raise ConfigError("model.channels must be a non-empty list of positive sizes")


@register("conv")
class ConvAE(Autoencoder):
    Config = ConvConfig

    def __init__(self, cfg: ConvConfig, input_shape, num_classes=10):
        super().__init__(cfg, input_shape, num_classes)
        self.encoder, sizes = conv_encoder(input_shape, cfg.channels, cfg.latent_dim, cfg.activation, cfg.batchnorm)
        self.decoder = conv_decoder(input_shape, cfg.channels, sizes, cfg.latent_dim, cfg.activation, cfg.batchnorm)
