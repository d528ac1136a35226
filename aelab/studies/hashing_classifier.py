"""A small CNN classifier the studies train as a measuring instrument, through the engine.

The `generation` study takes Fréchet distances in its penultimate-layer features and its confidence
on samples; the `hashing` study rounds a logistic penultimate layer into a supervised hash (Guo & Li
2015). It keeps the model contract the engine needs (`forward(batch, player)` -> {"loss"},
`players()`, `metrics(batch)`) but is not an autoencoder, so it is not in the model registry.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data.device import DeviceData
from ..engine import fit
from ..models.base import Player


class SmallCNN(nn.Module):
    """Two strided 3x3 convs, a `feat_dim` penultimate layer (ReLU or logistic), a linear classifier."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, feat_dim: int = 128,
                 feat_act: Literal["relu", "sigmoid"] = "relu", channels: tuple[int, int] = (32, 64)):
        super().__init__()
        c, h, w = input_shape
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        h4, w4 = (h2 + 1) // 2, (w2 + 1) // 2
        self.body = nn.Sequential(
            nn.Conv2d(c, channels[0], 3, stride=2, padding=1), nn.BatchNorm2d(channels[0]), nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 3, stride=2, padding=1), nn.BatchNorm2d(channels[1]), nn.ReLU(),
            nn.Flatten(), nn.Linear(channels[1] * h4 * w4, feat_dim))
        self.act = nn.Sigmoid() if feat_act == "sigmoid" else nn.ReLU()
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> penultimate activations (B, feat_dim)."""
        return self.act(self.body(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def players(self) -> list[Player]:
        return [Player("model", list(self.parameters()))]

    def forward(self, batch: dict[str, torch.Tensor], player: str = "model") -> dict[str, torch.Tensor]:
        logits = self.logits(batch["x_in"]).float()
        return {"loss": F.cross_entropy(logits, batch["y"]), "acc": (logits.argmax(1) == batch["y"]).float().mean()}

    @torch.no_grad()
    def metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.forward(batch)


def train_classifier(train: DeviceData, input_shape: tuple[int, int, int], num_classes: int,
                     cfg: TrainConfig, steps: int, seed: int, feat_dim: int = 128,
                     feat_act: Literal["relu", "sigmoid"] = "relu", budget: float = 1.0) -> tuple[SmallCNN, dict]:
    """A SmallCNN fitted on the labelled rows of `train` for `steps` (times `budget`) optimiser steps with
    the study's train settings, in eval mode; and its curve and status (accuracy on a fixed sample of
    its training rows: the study has no validation split here)."""
    from ..convergence import classifier_collapse
    from .budget import Curve, probe_rows, train_cfg

    torch.manual_seed(seed)
    model = SmallCNN(input_shape, num_classes, feat_dim, feat_act)
    data = train.labelled()
    seen, curve = probe_rows(data), Curve("val.acc", higher_is_better=True)
    fit(model, data, train_cfg(cfg, steps, budget, corrupt="none"), val=seen, seed=seed, on_eval=curve)
    pred = apply_batched(model.logits, images(seen)).argmax(1).numpy()
    return model.eval(), curve.result(classifier_collapse(pred))


@torch.inference_mode()
def apply_batched(fn, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """fn over float images (N, C, H, W) in chunks -> concatenated float outputs on the host."""
    return torch.cat([fn(x[s:s + batch_size]).float().cpu() for s in range(0, len(x), batch_size)])


def images(data: DeviceData) -> torch.Tensor:
    """All images of a split as float (N, C, H, W) in [0, 1] on its device."""
    return data.x.float().div(255.0)
