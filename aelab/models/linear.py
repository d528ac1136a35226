"""Linear autoencoder: x_hat = W_d W_e (x - c) + c, no activations. Trained with squared error it
spans the same subspace as PCA (Baldi & Hornik 1989), the baseline of seed 001.

The model contract says decoders output logits, but a sigmoid would make the map nonlinear and
break the PCA equivalence. So with `recon = "mse"` (the default here) the decoder's output *is*
the image, the loss is plain squared error on it (`losses.mse`, not `losses.mse_logits`), and
`reconstruct` converts it to logits (clamping to [0, 1]) for callers that apply a sigmoid.
With `recon = "bce"` the output is treated as logits like any other model (a logistic decoder).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from .base import AEConfig, Autoencoder, register
from .blocks import numel


@dataclass
class LinearConfig(AEConfig):
    recon: Literal["bce", "mse"] = "mse"  # mse: the decoder output is the image (PCA); bce: logits
    bias: bool = True  # learn a centre c (the data mean, in effect); False: uncentred, like an SVD


@register("linear")
class LinearAE(Autoencoder):
    Config = LinearConfig

    def __init__(self, cfg: LinearConfig, input_shape, num_classes=10):
        super().__init__(cfg, input_shape, num_classes)
        n = numel(input_shape)
        self.encoder = nn.Linear(n, cfg.latent_dim, bias=False)  # W_e (D, n)
        self.decoder = nn.Linear(cfg.latent_dim, n, bias=False)  # W_d (n, D)
        self.centre = nn.Parameter(torch.zeros(n)) if cfg.bias else None  # c (n,)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)  # (B, n)
        return self.encoder(h - self.centre if self.centre is not None else h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.decoder(z)
        h = h + self.centre if self.centre is not None else h
        return h.view(z.shape[0], *self.input_shape)  # the image (mse) or logits (bce)

    def recon_loss(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.recon == "mse":
            return losses.mse(out, x).mean()  # identity output: no sigmoid
        return super().recon_loss(out, x)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decode(self.encode(x))
        if self.cfg.recon == "bce":
            return out
        return torch.logit(out.float(), eps=1e-6)  # sigmoid of it = the image clamped to [0, 1]

    @torch.no_grad()
    def metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().metrics(batch)
        if self.cfg.recon == "mse":  # the unclamped linear reconstruction's error, as PCA reports it
            x = batch["x"]
            out["mse"] = F.mse_loss(self.decode(self.encode(x)).float(), x.float())
        return out
