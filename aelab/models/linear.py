"""Linear autoencoder: x_hat = W_d W_e (x - c) + c, no activations. Trained with squared error it
spans the same subspace as PCA (Baldi & Hornik 1989), the baseline of seed 001.

The model contract says decoders output logits, but a sigmoid would make the map nonlinear and
break the PCA equivalence. So with `recon = "mse"` (the default here) the decoder's output *is*
the image, the loss is plain squared error on it (`losses.mse`, not `losses.mse_logits`), and
`reconstruct` converts it to logits (clamping to [0, 1]) for callers that apply a sigmoid.
With `recon = "bce"` the output is treated as logits like any other model (a logistic decoder).

The centre c is learned from the data as PCA learns `mean_`: the running mean of the training
inputs, not a bias trained by gradient. With a gradient-trained c (started at 0) one code direction
first absorbs the mean offset and leaves it only slowly: on 8x8 digits with 5 codes it was still
70 degrees off PCA's subspace after 1000 full-batch Adam steps, against < 0.1 with the mean.
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
    # Subtract the running mean of the inputs. False: uncentred, like a truncated SVD; it converges
    # far more slowly (the mean dwarfs the other directions: 3000 Adam steps where 500 do centred).
    centre: bool = True


@register("linear")
class LinearAE(Autoencoder):
    Config = LinearConfig
    needs_fp32 = True  # its subspace matches PCA's to 5 digits in fp32; bf16's 8-bit mantissa cannot

    def __init__(self, cfg: LinearConfig, input_shape, num_classes=10):
        super().__init__(cfg, input_shape, num_classes)
        n = numel(input_shape)
        self.encoder = nn.Linear(n, cfg.latent_dim, bias=False)  # W_e (D, n)
        self.decoder = nn.Linear(cfg.latent_dim, n, bias=False)  # W_d (n, D)
        # c (n,) and the number of images averaged into it; buffers: saved, never trained
        self.register_buffer("centre", torch.zeros(n) if cfg.centre else None)
        self.register_buffer("seen", torch.zeros(()) if cfg.centre else None)

    def forward(self, batch: dict[str, torch.Tensor], player: str = "model") -> dict[str, torch.Tensor]:
        if self.centre is not None and self.training and torch.is_grad_enabled():  # not in metrics()
            self.track_mean(batch["x_in"])
        return super().forward(batch, player)

    @torch.no_grad()
    def track_mean(self, x: torch.Tensor) -> None:
        """Fold the batch (B, C, H, W) into the cumulative mean: after one epoch, the data mean."""
        b = x.shape[0]
        self.seen += b
        self.centre += (x.flatten(1).float().mean(0) - self.centre) * (b / self.seen)

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

    def decode_image(self, z: torch.Tensor) -> torch.Tensor:
        if self.cfg.recon == "bce":
            return super().decode_image(z)
        return self.decode(z).clamp(0, 1)  # the output is the image itself

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
