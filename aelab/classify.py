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
                     num_classes: int = 10, seed: int = 0, **fit_kw) -> Classifier:
    """A `Classifier` of `ae` trained on `labelled` (all rows y >= 0) for `cfg.steps` optimiser steps
    (or `cfg.epochs` passes); `fit_kw` goes to `fit` (val, on_eval)."""
    torch.manual_seed(seed)  # the head's (and a scratch encoder's) initialisation
    clf = Classifier(ae, num_classes, mode)
    fit(clf, labelled, cfg, seed=seed, **fit_kw)
    return clf


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
