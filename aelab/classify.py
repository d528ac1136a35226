"""A classifier head on an autoencoder's encoder, trained by the engine like any model (STYLE 5).

Three routes share one class (seed 002, seed 004 Q2):
  "probe"     the pretrained encoder frozen (eval mode, no gradient), a linear layer trained on its codes
  "finetune"  the pretrained encoder and the head trained together on the labelled images
  "scratch"   the same architecture freshly initialised, encoder and head trained together
`forward(batch)` returns cross-entropy on the labelled rows (y >= 0) as "loss" and logs "acc".

    clf = Classifier(ae, num_classes=10, mode="probe")
    fit(clf, splits.train.labelled(), TrainConfig(epochs=50))
    accuracy(clf, splits.test)
"""
from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data.device import DeviceData
from .engine import fit
from .errors import ConfigError
from .models.base import Autoencoder, Player, build_model

Mode = Literal["probe", "finetune", "scratch"]
MODES: tuple[str, ...] = ("probe", "finetune", "scratch")


class Classifier(nn.Module):
    """`encoder_of.encode` then a linear head; the autoencoder is copied, never changed in place."""

    def __init__(self, ae: Autoencoder, num_classes: int, mode: Mode = "finetune"):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"classifier mode {mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode
        # scratch: a fresh model of the same config (the caller seeds torch); else a copy of the pretrained one
        self.ae = build_model(copy.deepcopy(ae.cfg), ae.input_shape, num_classes) if mode == "scratch" \
            else copy.deepcopy(ae)
        self.head = nn.Linear(ae.cfg.latent_dim, num_classes)
        if mode == "probe":
            self.ae.requires_grad_(False)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.mode == "probe":
            self.ae.eval()  # a frozen encoder keeps its batch-norm statistics from pretraining
        return self

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> class logits (B, num_classes)."""
        if self.mode == "probe":
            with torch.no_grad():
                z = self.ae.encode(x)
            return self.head(z.float())
        return self.head(self.ae.encode(x).float())

    def forward(self, batch: dict[str, torch.Tensor], player: str = "model") -> dict[str, torch.Tensor]:
        logits, y = self.logits(batch["x_in"]), batch["y"]
        labelled = (y >= 0).float()  # (B,) hidden labels (-1) take no part
        loss = F.cross_entropy(logits.float(), y.clamp(min=0), reduction="none")  # (B,)
        n = labelled.sum().clamp(min=1)
        acc = ((logits.argmax(1) == y).float() * labelled).sum() / n
        return {"loss": (loss * labelled).sum() / n, "acc": acc}

    def players(self) -> list[Player]:
        return [Player("model", [p for p in self.parameters() if p.requires_grad])]

    @torch.no_grad()
    def metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.forward(batch)


def train_classifier(ae: Autoencoder, labelled: DeviceData, mode: Mode, cfg: TrainConfig, *,
                     num_classes: int = 10, min_steps: int = 0, seed: int = 0) -> Classifier:
    """A `Classifier` of `ae` trained on `labelled` (all rows y >= 0) for `cfg.epochs`, or more epochs
    when the set is so small that they would give fewer than `min_steps` optimiser steps."""
    torch.manual_seed(seed)  # the head's (and a scratch encoder's) initialisation
    clf = Classifier(ae, num_classes, mode)
    fit(clf, labelled, with_min_steps(cfg, len(labelled), min_steps), seed=seed)
    return clf


def with_min_steps(cfg: TrainConfig, n: int, min_steps: int) -> TrainConfig:
    """A copy of `cfg` with enough epochs over `n` images for at least `min_steps` optimiser steps:
    a small set (100 labelled images, 8x8 digits) needs many epochs, a large one `cfg.epochs`."""
    per_epoch = max(1, n // min(cfg.batch_size, n))  # the engine drops the ragged last batch
    return TrainConfig(**{**vars(cfg), "epochs": max(cfg.epochs, math.ceil(min_steps / per_epoch))})


@torch.inference_mode()
def predict(model: Classifier, data: DeviceData, batch_size: int = 1024) -> torch.Tensor:
    """Predicted classes (N,) of every image in `data`, on the host."""
    was_training = model.training
    model.eval()
    out = [model.logits(data.batch(slice(s, s + batch_size))["x"]).argmax(1) for s in range(0, len(data), batch_size)]
    model.train(was_training)
    return torch.cat(out).cpu()


def accuracy(model: Classifier, data: DeviceData) -> float:
    """Fraction of `data` (its true labels) that `model` classifies correctly."""
    return float((predict(model, data) == data.y.cpu()).float().mean())
