"""Deep autoencoder with tied weights: decoder layer j uses the transposed weight of its mirror
encoder layer (W_{N-L+1} = W_L^T, seed 004 Q5) and owns only its bias, about halving the weights.

The transposed weight is read at call time instead of being registered twice, so each tensor has
one name in the state dict (safetensors refuses shared tensors).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import register
from .deep import DeepAE, DeepConfig


class Bias(nn.Module):
    """A decoder layer whose weight is borrowed from the encoder: (d_out,) bias only."""

    def __init__(self, d_out: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(d_out))


@register("tied")
class TiedAE(DeepAE):
    Config = DeepConfig

    def decoder_layer(self, d_in: int, d_out: int) -> nn.Module:
        return Bias(d_out)

    def decoder_linear(self, j: int, h: torch.Tensor) -> torch.Tensor:
        # Mirror encoder layer maps d_out -> d_in: weight (d_in, d_out); F.linear wants (d_out, d_in).
        w = self.enc[self.depth - 1 - j].weight
        return F.linear(h, w.t(), self.dec[j].bias)
