"""How each arm of the semi-supervised study trains: one function per route, all on the same data.

Every route sees the same three things: `data`, the training images with the labels of the chosen
`n` kept (class-balanced) and the rest -1; `val`, a held-out labelled validation split (outside the
label budget, as the papers hold one out; used for every choice, never the test set); and a `Budget`
(epochs over the training images, learning rate, batch). While a route trains, the validation
accuracy is read after every epoch and the best epoch's weights are kept (the budget chosen on
validation; an extra epoch costs an evaluation, not a run). Routes return the trained model and
that validation curve; the study measures the test accuracy of what they return.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..classify import Classifier
from ..config import DataConfig, ModelConfig, TrainConfig
from ..data.device import DeviceData
from ..engine import fit
from ..models import build_model
from ..models.semi_common import SemiSupervised


@dataclass
class Budget:
    epochs: int = 4  # passes over the training images (the engine's batch: the unlabelled half)
    lr: float = 2e-3
    batch_size: int = 100  # unlabelled images per step (the labelled half: the model's clf_batch)

    def train(self, base: TrainConfig) -> TrainConfig:
        return dataclasses.replace(base, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, progress="off")


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.classify(x) if hasattr(model, "classify") else model.logits(x)


@torch.no_grad()
def accuracy(model: nn.Module, data: DeviceData, batch_size: int = 1000) -> float:
    """Fraction of `data` classified right (eval mode, clean images)."""
    was = model.training
    model.eval()
    hits = sum(int((logits_of(model, data.batch(slice(s, s + batch_size))["x"]).argmax(1)
                    == data.y[s:s + batch_size]).sum()) for s in range(0, len(data), batch_size))
    model.train(was)
    return hits / max(len(data), 1)


def fit_best(model: nn.Module, data: DeviceData, val: DeviceData, train: TrainConfig, seed: int,
             augment: DataConfig | None = None) -> list[float]:
    """`fit`, reading the validation accuracy after each epoch; the best epoch's weights are kept."""
    curve: list[float] = []
    best: dict = {}

    def on_epoch(row: dict) -> None:
        curve.append(accuracy(model, val))
        if curve[-1] >= max(curve):
            best.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    fit(model, data, train, seed=seed, augment=augment, on_epoch=on_epoch)
    model.load_state_dict(best)
    return curve


def pooled(cfg: ModelConfig, data: DeviceData, shape: tuple, k: int, seed: int) -> nn.Module:
    """A fresh model (seeded) holding the labelled rows of `data` as its pool."""
    torch.manual_seed(seed)
    model = build_model(cfg, shape, k).to(data.device)
    lab = data.labelled()
    if isinstance(model, SemiSupervised):  # M2 weighs its classifier by the images per label
        model.set_pool(lab.x, lab.y, n_train=len(data))
    else:
        model.set_pool(lab.x, lab.y)
    return model


def train_pooled(cfg: ModelConfig, data: DeviceData, val: DeviceData, budget: Budget, base: TrainConfig,
                 seed: int, prepare: Callable[[nn.Module], None] | None = None) -> tuple[nn.Module, list[float]]:
    """Ladder, M2, AAE, SEN and the supervised baseline: one model, its pool, the engine's batches."""
    model = pooled(cfg, data, tuple(data.x.shape[1:]), _classes(data, val), seed)
    if prepare is not None:
        prepare(model)
    return model, fit_best(model, data, val, budget.train(base), seed)


def _classes(data: DeviceData, val: DeviceData) -> int:
    return int(max(int(data.y.max()), int(val.y.max()))) + 1


def pretrain(cfg: ModelConfig, data: DeviceData, budget: Budget, base: TrainConfig, seed: int) -> nn.Module:
    """An autoencoder trained on every training image, labels unused (M1, the fine-tuned route's AE)."""
    torch.manual_seed(seed)
    ae = build_model(cfg, tuple(data.x.shape[1:]), 10).to(data.device)
    fit(ae, data, budget.train(base), seed=seed)
    return ae


def train_finetune(ae: nn.Module, data: DeviceData, val: DeviceData, budget: Budget, base: TrainConfig,
                   seed: int, augment: DataConfig) -> tuple[nn.Module, list[float]]:
    """The few-label route (aelab.classify): the pretrained encoder and a linear head trained on the
    labelled images alone, augmented; `budget.epochs` counts passes of `budget.batch_size` draws
    as for the other arms (the labelled set is repeated to the size of the training set)."""
    torch.manual_seed(seed)
    clf = Classifier(ae, _classes(data, val), "finetune")  # it trains a copy: `ae` stays as pretrained
    lab = data.labelled()
    reps = max(1, len(data) // max(len(lab), 1))
    rows = torch.arange(len(lab), device=lab.device).repeat(reps)
    return clf, fit_best(clf, lab.subset(rows), val, budget.train(base), seed, augment)
