"""Does an adversarial decoder on the representation layer stop a classifier memorising? (seed 000)

    aelab study memorization data=digits                     # small; part of the test suite
    aelab study memorization configs/memorization_fashion.toml [quick=true]

For lambda over a grid (both signs and 0: negative = the supervised autoencoder CE + |lam| R), the
bounded forms (hinge, gradient reversal, LayerNorm) at the largest lambda, and tuned baselines
(weight decay, dropout, VIB), for each training-set size N and seed (paired across arms), it trains
the `adversarial` model with the engine and measures accuracy, generalisation gaps, calibration, how
much of the input a fresh probe decoder can still read from the representation (on a 0..1 scale),
a membership-inference attack and label-noise memorisation. memorization_report.py turns the
records into intervals, paired differences, verdicts and figures.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data.device import DeviceData
from ..engine import fit
from ..errors import ConfigError
from ..models import build_model
from ..models.adversarial import AdversarialConfig
from ..models.conv import ConvConfig
from . import memorization_measures as ms
from ..convergence import classifier_collapse
from .base import Cell, CellContext, Results, Study, StudyConfig, dataset_of, register_study, seeds_of
from .budget import ArmBudget, Curve, check_steps, probe_rows, train_cfg
from .memorization_report import TUNED, arms, grid, report  # noqa: F401 (re-exported)

QUICK = dict(seeds=3, sizes=(1000, 5000), lambdas=(-3.0, 0.0, 3.0), bounded=("hinge",), budget=0.8,
             tune_wd=(0.05,), tune_dropout=(0.3,), tune_vib=(1e-3,))


@dataclass
class MemorizationConfig(StudyConfig):
    seeds: int = 5
    sizes: tuple[int, ...] = (1000, 5000, 0)  # training images per run; 0 = all of the training split
    lambdas: tuple[float, ...] = (-3.0, -1.0, 0.0, 1.0, 3.0)  # R is per-pixel MSE (~0.01-0.1)
    # forms compared at the largest lambda; "reversal" gives `minus`'s classifier gradient exactly
    # (only the loss value differs), so it is offered but not in the default grid
    bounded: tuple[str, ...] = ("hinge", "layernorm")
    headline_lambda: float = 3.0  # the seed's arm named in the verdict sentence
    # optimiser steps of every run at train.batch_size, whatever N: the 45-min budget (before steps were
    # exact, round(250 * batch / N) passes gave 192 steps at N=1000, 247 at 5000, 210 at 54,000)
    steps: int = 250
    probe_features: int = 512  # random ReLU features of the closed-form probe decoder
    ref_steps_factor: int = 4  # the reference autoencoder trains this many times longer (once, all images)
    noise_fraction: float = 0.2  # label-noise runs: this share of training labels made wrong
    noise_sizes: tuple[int, ...] = (1000,)  # label-noise runs double an N's cost: where memorising is easiest
    tune_wd: tuple[float, ...] = (0.05, 0.3)  # AdamW decoupled weight decay grid (tuned per N, first seed)
    tune_dropout: tuple[float, ...] = (0.2, 0.5)
    tune_vib: tuple[float, ...] = (1e-3, 1e-2)
    model: AdversarialConfig = field(default_factory=lambda: AdversarialConfig(name="adversarial"))
    # a small CNN: larger batches use the CPU better
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=256))

    def check(self) -> None:
        super().check()
        check_steps(steps=self.steps, ref_steps_factor=self.ref_steps_factor)
        if not self.sizes or min(self.sizes) < 0 or 0.0 not in self.lambdas:
            raise ConfigError("sizes must be >= 0 (0 = all) and lambdas must include 0 (plain training)")
        if self.data.val_fraction <= 0:
            raise ConfigError("data.val_fraction must be > 0: the baselines are tuned on the validation split")
        if not set(self.bounded) <= {"hinge", "reversal", "layernorm"} or not 0 < self.noise_fraction < 1:
            raise ConfigError("bounded must be from hinge, reversal, layernorm; noise_fraction in (0, 1)")
        self.model.check()


@dataclass(frozen=True)
class TuneCell(Cell):
    point: int = 0  # index into the baseline's grid


def _train(cfg: MemorizationConfig, over: dict, data: DeviceData, seed: int, test: DeviceData | None = None,
           val: DeviceData | None = None):
    """One engine run of the adversarial model on `data`; returns the model, with `test` its per-pass
    curves (the figures), and with `val` its status: validation accuracy (a fixed 1,000 rows) at ~16 points."""
    over = dict(over)
    wd = over.pop("weight_decay", 0.0)
    mcfg = dataclasses.replace(cfg.model, **over)
    tcfg = train_cfg(cfg.train, cfg.steps, cfg.budget, weight_decay=wd)
    torch.manual_seed(seed)
    model = build_model(mcfg, tuple(data.x.shape[1:]), int(data.y.max()) + 1)
    curve: list[dict] = []
    seen = probe_rows(val) if val is not None else None
    acc = lambda: float((ms.per_example(model, seen)[0].argmax(1) == seen.y.cpu().numpy()).mean())  # noqa: E731
    status = Curve("val.acc", higher_is_better=True, metric=acc)

    def on_epoch(row: dict) -> None:  # the test set draws curves only; nothing is tuned on it
        p, _ = ms.per_example(model, test)
        curve.append({"epoch": row["epoch"], "ce": row["train.classifier.ce"], "R": row["train.classifier.R"],
                      "test_acc": float((p.argmax(1) == test.y.cpu().numpy()).mean())})

    fit(model, data, tcfg, seed=seed, on_epoch=on_epoch if test is not None else None,
        on_eval=status if val is not None else None)
    if val is None:
        return model, curve, {}
    return model, curve, status.result(classifier_collapse(ms.per_example(model, seen)[0].argmax(1)))


def _subset(train: DeviceData, n: int, seed: int) -> DeviceData:
    if n == 0 or n >= len(train):
        return train
    g = torch.Generator().manual_seed(seed)
    return train.subset(torch.randperm(len(train), generator=g)[:n].sort().values)


def _reference_ae(cfg: MemorizationConfig, train: DeviceData, test: DeviceData, seed: int) -> dict:
    """The probe scale's 1: test error of a plain autoencoder with the same code size (aelab's conv AE,
    trained on every training image for `ref_steps_factor` x the steps) through its own decoder. Once
    per study: an AE fit to N=1000 images overfits, a poor unit. A learned decoder usually reads a
    code better than the closed-form probe does, so the scores tend to err low. With its curve and status
    (its loss on a fixed 1,000 of its training images)."""
    torch.manual_seed(seed)
    ae_cfg = ConvConfig(name="conv", latent_dim=cfg.model.latent_dim, recon=cfg.model.recon,
                        channels=cfg.model.channels)
    ae = build_model(ae_cfg, tuple(train.x.shape[1:]))
    seen, curve = probe_rows(train), Curve("val.loss")
    fit(ae, train, train_cfg(cfg.train, cfg.steps * cfg.ref_steps_factor, cfg.budget), val=seen, seed=seed,
        on_eval=curve)
    return {"ae_mse": ms.own_reconstruction_error(ae, test), **curve.result()}


def _noise_run(cfg, over, sub: DeviceData, test: DeviceData, seed: int, classes: int) -> dict:
    """Train on labels with `noise_fraction` made wrong: how many wrong labels are learnt, and clean test accuracy."""
    y_noisy, mask = ms.noisy_labels(sub.y.cpu().numpy(), cfg.noise_fraction, classes, seed)
    noisy = DeviceData(sub.x, torch.as_tensor(y_noisy, device=sub.device))
    model, _, _ = _train(cfg, over, noisy, seed)
    p, _ = ms.per_example(model, noisy)
    pt, _ = ms.per_example(model, test)
    return {"noise_memorised": float((p.argmax(1) == y_noisy)[mask].mean()),
            "noise_test_acc": float((pt.argmax(1) == test.y.cpu().numpy()).mean())}


@register_study("memorization")
class Memorization(Study):
    Config = MemorizationConfig
    headline = "test_acc"

    def preset(self, cfg: MemorizationConfig) -> MemorizationConfig:
        return dataclasses.replace(cfg, **QUICK, noise_sizes=QUICK["sizes"][:1])

    def budgets(self, cfg: MemorizationConfig) -> list[ArmBudget]:
        from ..models.conv import ConvConfig as Conv

        b = cfg.train.batch_size
        clf = lambda splits: (build_model(cfg.model, tuple(splits.train.x.shape[1:]), 10),  # noqa: E731
                              splits.train, train_cfg(cfg.train, cfg.steps, cfg.budget))
        ae = lambda splits: (build_model(Conv(name="conv", latent_dim=cfg.model.latent_dim, recon=cfg.model.recon,  # noqa: E731
                                              channels=cfg.model.channels), tuple(splits.train.x.shape[1:])),
                             splits.train, train_cfg(cfg.train, cfg.steps * cfg.ref_steps_factor, cfg.budget))
        return [ArmBudget("reference-ae", cfg.steps * cfg.ref_steps_factor, b, None, "", probe=ae),
                ArmBudget("every arm", cfg.steps, b, None, "seed 000 states none", ("",), probe=clf)]

    def cells(self, cfg: MemorizationConfig) -> list[Cell]:
        tune = [TuneCell(f"tune:{b}", cfg.seed, n, point=i) for n in sizes(cfg) for b in TUNED
                for i in range(len(grid(cfg, b)))]
        return [Cell("reference-ae", cfg.seed)] + tune + \
            [Cell(a, s, n) for n in sizes(cfg) for s in seeds_of(cfg) for a in arms(cfg)]

    def needs(self, cfg: MemorizationConfig, cell: Cell) -> list[Cell]:
        if cell.arm == "reference-ae" or isinstance(cell, TuneCell):
            return []
        tuned = [TuneCell(f"tune:{cell.arm}", cfg.seed, cell.n, point=i) for i in range(len(grid(cfg, cell.arm)))] \
            if cell.arm in TUNED else []
        return [Cell("reference-ae", cfg.seed)] + tuned

    def run_cell(self, cfg: MemorizationConfig, cell: Cell, ctx: CellContext) -> dict:
        splits = ctx.data(cfg)
        if cell.arm == "reference-ae":
            return _reference_ae(cfg, splits.train, splits.test, cell.seed)
        if isinstance(cell, TuneCell):  # each baseline's grid, same size and budget, scored on validation
            model, _, status = _train(cfg, grid(cfg, cell.arm[5:])[cell.point],
                                      _subset(splits.train, cell.n, cell.seed), cell.seed, val=splits.val)
            probs, _ = ms.per_example(model, splits.val)
            return {"val_acc": float((probs.argmax(1) == splits.val.y.cpu().numpy()).mean()), **status}
        over = arms(cfg)[cell.arm]
        if cell.arm in TUNED:
            scores = [ctx.deps[d.key]["val_acc"] for d in self.needs(cfg, cell)[1:]]
            over = grid(cfg, cell.arm)[int(np.argmax(scores))]
        ae_err = ctx.deps[Cell("reference-ae", cfg.seed).key]["ae_mse"]
        show = cell.seed == cfg.seed and cell.n == sizes(cfg)[-1]
        return _one_run(cfg, cell, over, splits, ctx.dataset(cfg).num_classes, ae_err, show)

    def summarize(self, cfg: MemorizationConfig, results: Results, out: Path) -> dict:
        return report(cfg, results, out)


def sizes(cfg: MemorizationConfig) -> list[int]:
    """The training-set sizes, 0 for "all" (a size the training split cannot give counts as all)."""
    from ..data.device import split_rows

    n_train = len(split_rows(len(dataset_of(cfg).y_train), cfg.data.val_fraction, cfg.seed)[0])
    return list(dict.fromkeys(n if 0 < n < n_train else 0 for n in cfg.sizes))


def _one_run(cfg: MemorizationConfig, cell: Cell, over: dict, splits, classes: int, ae_err: float,
             show: bool) -> dict:
    """One arm on one seed's training subset: every measure (see the module docstring); `show`: also
    its training curves and its probe's reconstructions of one test image per class."""
    sub = _subset(splits.train, cell.n, cell.seed)
    cm_err, means = ms.class_mean_error(sub, splits.test, classes)
    ref = {"class_mean_mse": cm_err, "ae_mse": ae_err}
    model, curve, status = _train(cfg, over, sub, cell.seed, splits.test if show else None, splits.val)
    rec, recons = ms.measure(model, sub, splits.test, cfg.probe_features, ref, cell.seed)
    rec |= {f"ref_{k}": v for k, v in ref.items()} | {"n_train": len(sub), "chosen": over} | status
    if cell.n in {m if 0 < m < len(splits.train) else 0 for m in cfg.noise_sizes}:
        rec |= _noise_run(cfg, over, sub, splits.test, cell.seed, classes)
    if show:
        y = splits.test.y.cpu().numpy()
        idx = torch.as_tensor([int(np.flatnonzero(y == c)[0]) for c in np.unique(y)][:10])  # one per class
        rec |= {"train_curve": curve, "recons": recons[idx], "originals": splits.test.x[idx].float() / 255,
                "class_means": means[splits.test.y[idx]]}
    return rec
