"""The contract every aelab model keeps, and the registry that finds models by name.

A model owns its losses; the engine owns the loop (STYLE 5). A batch is a dict of device tensors:
  "x"    clean images, float in [0, 1], (B, C, H, W)
  "x_in" what the model sees: `x` corrupted for denoising, else `x` itself
  "y"    int64 labels (B,), -1 where the label is hidden (few-label training)
`forward(batch, player)` returns a dict of scalar tensors with "loss" (what `player` minimises) and
any other terms to log; all are means over the batch, reconstruction terms per image (nats for BCE).
A model with several players (a GAN, an adversarial decoder) lists them in `players()`; the engine
gives each its own optimiser and steps it on its own schedule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from ..config import ModelConfig
from ..errors import ConfigError
from ..registry import get_model_class, model_names, register  # noqa: F401 (re-exported)


def build_model(cfg: ModelConfig | str, input_shape: tuple[int, int, int], num_classes: int = 10) -> "Autoencoder":
    """A fresh model for images of `input_shape` (C, H, W); `cfg` may be a name for the defaults."""
    if isinstance(cfg, str):
        cls = get_model_class(cfg)
        cfg = cls.Config(name=cfg)
    cls = get_model_class(cfg.name)
    cfg.check()
    return cls(cfg, tuple(input_shape), num_classes)


@dataclass
class Player:
    """One trainer of a multi-player model: its parameters and how often it steps."""

    name: str
    params: list[nn.Parameter] = field(repr=False)
    every: int = 1  # takes its turn on every `every`-th engine step
    steps: int = 1  # optimiser steps per turn
    lr_scale: float = 1.0  # its learning rate relative to train.lr


@dataclass
class AEConfig(ModelConfig):
    """Fields shared by the autoencoders."""

    latent_dim: int = 30
    recon: Literal["bce", "mse"] = "bce"  # reconstruction loss on the decoder's logits

    def check(self) -> None:
        if self.latent_dim <= 0:
            raise ConfigError("model.latent_dim must be > 0")


class Autoencoder(nn.Module):
    """Base class: subclasses build `encoder`/`decoder` (or override `encode`/`decode`)."""

    Config = AEConfig
    name = "?"
    needs_fp32 = False  # True: the engine never autocasts this model (train.amp is ignored for it)
    # False where decode() is not the model's own way back to images (the memorisation classifier's
    # decoder is an adversary that probes the representation): explorers and exporters skip it then.
    has_decoder = True

    def __init__(self, cfg: AEConfig, input_shape: tuple[int, int, int], num_classes: int = 10):
        super().__init__()
        self.cfg, self.input_shape, self.num_classes = cfg, tuple(input_shape), num_classes

    # -- the three calls every model answers
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> codes (B, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (B, latent_dim) -> logits (B, C, H, W); sigmoid gives the image."""
        return self.decoder(z)

    def forward(self, batch: dict[str, torch.Tensor], player: str = "model") -> dict[str, torch.Tensor]:
        z = self.encode(batch["x_in"])
        recon = self.recon_loss(self.decode(z), batch["x"])
        return {"loss": recon + self.penalty(z), "recon": recon}

    # -- hooks a variant overrides instead of copying forward (STYLE 10)
    def penalty(self, z: torch.Tensor) -> torch.Tensor:
        """An extra term on the codes (sparsity); zero for a plain autoencoder."""
        return z.new_zeros(())

    def recon_loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-image reconstruction loss, mean over the batch."""
        fn = losses.bce_logits if self.cfg.recon == "bce" else losses.mse_logits
        return fn(logits, x).mean()

    def players(self) -> list[Player]:
        return [Player("model", list(self.parameters()))]

    def pretrain_stages(self) -> list[nn.Module]:
        """Greedy layer-wise pretraining: modules to train in order, before the whole model.

        Each stage keeps the model contract (`forward(batch, player)` -> dict with "loss",
        `players()`, `metrics(batch)`) and shares its parameters with this model, so training the
        stages in turn initialises it. Empty (the default) when the model has no such stages or
        pretraining is switched off in its config.
        """
        return []

    # -- evaluation
    def decode_image(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (B, latent_dim) -> images (B, C, H, W) in [0, 1]: sigmoid of the decoder's logits."""
        return torch.sigmoid(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the reconstruction of clean images (the mean code for stochastic encoders)."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batch means of the evaluation metrics: the training terms plus MSE per pixel, BCE per image."""
        out = {k: v.float() for k, v in self.forward(batch).items()}
        logits = self.reconstruct(batch["x"]).float()
        out["mse"] = F.mse_loss(torch.sigmoid(logits), batch["x"])
        out["bce"] = losses.bce_logits(logits, batch["x"]).mean()
        return out
