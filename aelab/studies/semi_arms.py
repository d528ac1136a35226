"""How each arm of the semi-supervised study trains: one function per route, all on the same data.

Every route sees the same three things: `data`, the training images with the labels of the chosen
`n` kept (class-balanced) and the rest -1; `val`, a held-out labelled validation split (outside the
label budget, as the papers hold one out; used for every choice, never the test set); and a `Budget`
(optimiser steps, learning rate, batch). While a route trains, the validation accuracy is read at
~16 points (`budget.POINTS`) and the best point's weights are kept (the budget chosen on validation;
an extra point costs an evaluation, not a run). Routes return the trained model and that validation
curve (a `budget.Curve`); the study measures the test accuracy of what they return.
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
from ..convergence import classifier_collapse
from ..models.semi_common import SemiSupervised
from .budget import Curve, train_cfg


@dataclass
class Budget:
    steps: int = 1000  # optimiser steps (the engine's batch: the unlabelled half)
    lr: float = 2e-3
    batch_size: int = 100  # unlabelled images per step (the labelled half: the model's clf_batch)
    scale: float = 1.0  # the study's budget multiplier

    def train(self, base: TrainConfig) -> TrainConfig:
        return train_cfg(base, self.steps, self.scale, lr=self.lr, batch_size=self.batch_size)


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.classify(x) if hasattr(model, "classify") else model.logits(x)


@torch.no_grad()
def predict(model: nn.Module, data: DeviceData, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes (N,) of `data` (eval mode, clean images; the model's mode is restored)."""
    was = model.training
    model.eval()
    pred = torch.cat([logits_of(model, data.batch(slice(s, s + batch_size))["x"]).argmax(1)
                      for s in range(0, len(data), batch_size)])
    model.train(was)
    return pred


def accuracy(model: nn.Module, data: DeviceData) -> float:
    """Fraction of `data` classified right."""
    return float((predict(model, data) == data.y).float().mean()) if len(data) else 0.0


def collapse(model: nn.Module, val: DeviceData) -> str | None:
    """Why the model's predictions on `val` carry no information (one class for >= 90%), or None."""
    return classifier_collapse(predict(model, val).cpu().numpy())


def fit_best(model: nn.Module, data: DeviceData, val: DeviceData, train: TrainConfig, seed: int,
             augment: DataConfig | None = None) -> Curve:
    """`fit`, reading the validation accuracy at each curve point; the best point's weights are kept."""
    best: dict = {}

    def keep() -> float:
        acc = accuracy(model, val)
        if not curve.points or acc >= max(v for _, v in curve.points):
            best.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return acc

    curve = Curve("val.acc", higher_is_better=True, metric=keep)
    fit(model, data, train, seed=seed, augment=augment, on_eval=curve)
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
                 seed: int, prepare: Callable[[nn.Module], None] | None = None) -> tuple[nn.Module, Curve]:
    """Ladder, M2, AAE, SEN and the supervised baseline: one model, its pool, the engine's batches."""
    model = pooled(cfg, data, tuple(data.x.shape[1:]), _classes(data, val), seed)
    if prepare is not None:
        prepare(model)
    return model, fit_best(model, data, val, budget.train(base), seed)


def _classes(data: DeviceData, val: DeviceData) -> int:
    return int(max(int(data.y.max()), int(val.y.max()))) + 1


def pretrain(cfg: ModelConfig, data: DeviceData, budget: Budget, base: TrainConfig, seed: int) -> tuple[nn.Module, dict]:
    """An autoencoder trained on every training image, labels unused (M1, the fine-tuned route's AE), and
    its curve and status: its loss on a fixed sample of those images (VAE: collapsed if no KL is left)."""
    from ..convergence import vae_collapse
    from .budget import kl_per_dim, probe_rows

    torch.manual_seed(seed)
    ae = build_model(cfg, tuple(data.x.shape[1:]), 10).to(data.device)
    seen, curve = probe_rows(data), Curve("val.loss")
    fit(ae, data, budget.train(base), val=seen, seed=seed, on_eval=curve)
    return ae, curve.result(vae_collapse(kl_per_dim(ae, seen)) if hasattr(ae, "posterior") else None)


def train_finetune(ae: nn.Module, data: DeviceData, val: DeviceData, budget: Budget, base: TrainConfig,
                   seed: int, augment: DataConfig) -> tuple[nn.Module, Curve]:
    """The few-label route (aelab.classify): the pretrained encoder and a linear head trained on the
    labelled images alone, augmented, for `budget.steps` steps of `budget.batch_size` draws (the
    labelled set is repeated to the size of the training set, so a pass shuffles as for the other arms)."""
    torch.manual_seed(seed)
    clf = Classifier(ae, _classes(data, val), "finetune")  # it trains a copy: `ae` stays as pretrained
    lab = data.labelled()
    reps = max(1, len(data) // max(len(lab), 1))
    rows = torch.arange(len(lab), device=lab.device).repeat(reps)
    return clf, fit_best(clf, lab.subset(rows), val, budget.train(base), seed, augment)
