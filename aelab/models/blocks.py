"""Layers the model families share."""
from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "gelu": nn.GELU,
               "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "softplus": nn.Softplus, "none": nn.Identity}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def mlp(sizes: list[int], act: str = "relu", last_act: str = "none") -> nn.Sequential:
    """Linear layers through `sizes`, `act` between them and `last_act` after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b), activation(act if i < len(sizes) - 2 else last_act)]
    return nn.Sequential(*layers)


class Flatten(nn.Module):
    """(B, C, H, W) -> (B, C*H*W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Unflatten(nn.Module):
    """(B, C*H*W) -> (B, C, H, W)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], *self.shape)


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _down(size: int) -> int:
    """Spatial size after a 3x3 conv with stride 2 and padding 1."""
    return (size + 1) // 2


def conv_encoder(input_shape: tuple[int, int, int], channels: tuple[int, ...], out_dim: int,
                 act: str = "relu", batchnorm: bool = True) -> tuple[nn.Sequential, list[tuple[int, int]]]:
    """Strided 3x3 convs then a linear layer to `out_dim`; also returns the spatial sizes it passed."""
    c, h, w = input_shape
    layers: list[nn.Module] = []
    sizes = [(h, w)]
    for ch in channels:
        layers += [nn.Conv2d(c, ch, 3, stride=2, padding=1, bias=not batchnorm)]
        layers += [nn.BatchNorm2d(ch)] if batchnorm else []
        layers += [activation(act)]
        c, h, w = ch, _down(h), _down(w)
        sizes.append((h, w))
    layers += [Flatten(), nn.Linear(c * h * w, out_dim)]
    return nn.Sequential(*layers), sizes


def conv_decoder(output_shape: tuple[int, int, int], channels: tuple[int, ...], sizes: list[tuple[int, int]],
                 in_dim: int, act: str = "relu", batchnorm: bool = True) -> nn.Sequential:
    """Mirror of `conv_encoder`: linear, then transposed convs that land exactly on `sizes` in reverse.

    Each transposed conv doubles the size minus one; `output_padding` adds the one back where the
    encoder's size was even, so any input size (8, 28, 32, ...) is rebuilt exactly. Outputs logits.
    """
    chans = list(channels[::-1])
    h, w = sizes[-1]
    layers: list[nn.Module] = [nn.Linear(in_dim, chans[0] * h * w), activation(act), Unflatten((chans[0], h, w))]
    targets = sizes[-2::-1]
    for i, (th, tw) in enumerate(targets):
        last = i == len(targets) - 1
        cout = output_shape[0] if last else chans[i + 1]
        pad = (th - (2 * h - 1), tw - (2 * w - 1))
        layers += [nn.ConvTranspose2d(chans[i], cout, 3, stride=2, padding=1, output_padding=pad,
                                      bias=last or not batchnorm)]
        if not last:
            layers += ([nn.BatchNorm2d(cout)] if batchnorm else []) + [activation(act)]
        h, w = th, tw
    return nn.Sequential(*layers)
