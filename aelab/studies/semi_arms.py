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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..checkpoint import load_tensors, save_tensors
from ..classify import Classifier
from ..config import DataConfig, ModelConfig, TrainConfig
from ..data.device import DeviceData
from ..engine import fit
from ..models import build_model
from ..convergence import classifier_collapse
from ..models.semi_common import SemiSupervised
from .budget import Curve, checkpointing, train_cfg

BEST, BEST_SMALL = "best.safetensors", "best_small.safetensors"  # a checkpointing cell's best weights (fit_best)


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


@dataclass
class Pick:
    """A validation set a run picks its best point on (`key`: the curve's name in the points): the
    accuracy curve on it and the best point's weights; `file` holds them in a checkpointing cell."""

    key: str
    data: DeviceData
    file: str
    curve: Curve = field(init=False)
    best: dict = field(default_factory=dict)

    def __post_init__(self):
        self.curve = Curve(self.key, higher_is_better=True)

    def observe(self, point: dict, model: nn.Module, run_dir) -> None:
        point[self.key] = accuracy(model, self.data)
        self.curve(point)
        step, acc = self.curve.points[-1]
        # strictly better than every earlier point: on a tie the first point stays, the one the result
        # names (argmax); with 100 validation images ties are common
        if all(acc > v for _, v in self.curve.points[:-1]):
            self.best = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if run_dir is not None:
                save_tensors(Path(run_dir) / self.file, self.best, {"step": step})

    def restore(self, evals: list[dict], run_dir) -> None:
        self.curve.points = [(p["step"], float(p[self.key])) for p in evals]
        if (Path(run_dir) / self.file).exists():
            self.best = load_tensors(Path(run_dir) / self.file)[0]


@dataclass
class Selection:
    """What `fit_best` picked: on the validation split (`curve`, its best weights loaded in the model)
    and, where a small labelled validation set was given, on that one too (`small`)."""

    curve: Curve
    small: Pick | None = None


def fit_best(model: nn.Module, data: DeviceData, val: DeviceData, train: TrainConfig, seed: int,
             augment: DataConfig | None = None, workdir: Path | None = None,
             small: DeviceData | None = None) -> Selection:
    """`fit`, reading the validation accuracy at each curve point (on `val`, and on `small` when given);
    the model ends with the best point's weights on `val`. With a `workdir` (a long cell of a study)
    the run checkpoints there each pass and the best weights go to files beside it, so a killed study's
    resume continues from the last pass with its curves and best points (a best file may be newer than
    the checkpoint: it then holds the best of more points, which the replay recomputes)."""
    picks = [Pick("val.acc", val, BEST)] + ([Pick("val.acc_small", small, BEST_SMALL)] if small is not None else [])
    run_dir, resume, evals = checkpointing(workdir, train.steps)
    for p in picks if resume else ():
        p.restore(evals, run_dir)

    def on_eval(point: dict) -> None:
        for p in picks:
            p.observe(point, model, run_dir)

    fit(model, data, train, seed=seed, augment=augment, on_eval=on_eval, run_dir=run_dir, resume=resume)
    if picks[0].best:
        model.load_state_dict(picks[0].best)
    return Selection(picks[0].curve, picks[1] if small is not None else None)


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
                 seed: int, prepare: Callable[[nn.Module], None] | None = None,
                 workdir: Path | None = None, small: DeviceData | None = None) -> tuple[nn.Module, Selection]:
    """Ladder, M2, AAE, SEN and the supervised baseline: one model, its pool, the engine's batches."""
    model = pooled(cfg, data, tuple(data.x.shape[1:]), _classes(data, val), seed)
    if prepare is not None:
        prepare(model)
    return model, fit_best(model, data, val, budget.train(base), seed, workdir=workdir, small=small)


def _classes(data: DeviceData, val: DeviceData) -> int:
    return int(max(int(data.y.max()), int(val.y.max()))) + 1


def pretrain(cfg: ModelConfig, data: DeviceData, budget: Budget, base: TrainConfig, seed: int,
             workdir: Path | None = None) -> tuple[nn.Module, dict]:
    """An autoencoder trained on every training image, labels unused (M1, the fine-tuned route's AE), and
    its curve and status: its loss on a fixed sample of those images (VAE: collapsed if no KL is left)."""
    from ..convergence import vae_collapse
    from .budget import kl_per_dim, probe_rows

    torch.manual_seed(seed)
    ae = build_model(cfg, tuple(data.x.shape[1:]), 10).to(data.device)
    seen, curve, train = probe_rows(data), Curve("val.loss"), budget.train(base)
    run_dir, resume, evals = checkpointing(workdir, train.steps)
    curve.points = [(p["step"], float(p["val.loss"])) for p in evals]
    fit(ae, data, train, val=seen, seed=seed, on_eval=curve, run_dir=run_dir, resume=resume)
    return ae, curve.result(vae_collapse(kl_per_dim(ae, seen)) if hasattr(ae, "posterior") else None)


def train_finetune(ae: nn.Module, data: DeviceData, val: DeviceData, budget: Budget, base: TrainConfig,
                   seed: int, augment: DataConfig, workdir: Path | None = None,
                   small: DeviceData | None = None) -> tuple[nn.Module, Selection]:
    """The few-label route (aelab.classify): the pretrained encoder and a linear head trained on the
    labelled images alone, augmented, for `budget.steps` steps of `budget.batch_size` draws (the
    labelled set is repeated to the size of the training set, so a pass shuffles as for the other arms)."""
    torch.manual_seed(seed)
    clf = Classifier(ae, _classes(data, val), "finetune")  # it trains a copy: `ae` stays as pretrained
    lab = data.labelled()
    reps = max(1, len(data) // max(len(lab), 1))
    rows = torch.arange(len(lab), device=lab.device).repeat(reps)
    return clf, fit_best(clf, lab.subset(rows), val, budget.train(base), seed, augment, workdir, small)
