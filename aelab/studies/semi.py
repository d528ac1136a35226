"""semi: few labels, done right: the semi-supervised autoencoder family against a tuned supervised baseline.

    aelab study semi configs/semi_fashion.toml          # Fashion-MNIST, the CPU budgets (README)
    aelab study semi configs/semi_gpu.toml data=mnist   # the papers' budgets, for a GPU
    aelab study semi data=digits quick=true             # seconds: the test suite runs it

Labels: `labels` in all (class-balanced, the subset drawn from each seed), plus every label for the
supervised ceiling. Arms, each on the same labelled subset per seed (paired), all with the same
augmentation of the labelled images (`rotate`, `shift`, `hflip`):
  supervised         a ladder's network on the labelled images alone (the augmentation): the network
                     (`tune_arch`: the MLP, a strided conv), its noise (`tune_noise`: none, the
                     ladder's) and learning rate (`tune_lr`) chosen on validation by tuning cells
  pretrain-finetune  a conv AE trained on every image, then fine-tuned with a head (aelab.classify)
  sen, sen+pl        the Shared Encoding Network (seed 003), without and with pseudo-labels
  ladder-gamma       the Γ-model (Rasmus et al. 2015): denoising cost on the top layer only
  ladder-full        the full ladder: a denoising cost on every layer
  m2                 M1+M2 (Kingma et al. 2014): M2 on the codes of a VAE trained on every image
  aae                the semi-supervised adversarial autoencoder (Makhzani et al. 2015)
  vat                virtual adversarial training (Miyato et al. 2018) on the ladder's MLP: a reference from
                     outside the autoencoder family, in its own league (never the bar's "best arm"); its
                     eps (`tune_eps`) chosen on validation by tuning cells, like the baseline's settings
Validation: a labelled split (`data.val_fraction` of the training images) is held out as the papers
do, outside the label budget and never used for training, the same rule for every arm: every arm
keeps its best epoch by validation accuracy, the baseline's learning rate is chosen on it, and the
best arm is chosen on it; test accuracy is read once per cell, at the end. `val_small` > 0 adds the
realistic protocol (Oliver et al. 2018): a labelled validation set of that many images (class-balanced,
drawn from the held-out split per seed), on which every cell also picks its best point and every
choice is made again; the summary gives the verdicts under both protocols. The unlabelled images are
the rest of the training split. Seeds are paired: verdicts of each arm against the supervised
baseline come from 95% intervals of the per-seed differences (aelab.stats).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
import numpy as np
import torch

from ..config import DataConfig, TrainConfig
from ..data.device import DeviceData, hide_labels, split_rows
from ..errors import ConfigError
from ..models import build_model
from ..models.aae_ssl import AAESSLConfig
from ..models.conv import ConvConfig
from ..models.ladder import LadderConfig
from ..models.m2 import M2Config
from ..models.sen import SENConfig
from ..models.vae import VAEConfig
from ..models.vat import VATConfig
from . import semi_arms as arms
from . import semi_report
from .semi_report import REFERENCE, tune_cells, tuned, vat_cells  # noqa: F401 (re-exported)
from .budget import ArmBudget, check_steps
from .base import (Cell, CellContext, Results, Study, StudyConfig, dataset_of, load_state_arrays, register_study,
                   seeds_of, state_arrays)

ARMS = ("supervised", "pretrain-finetune", "sen", "sen+pl", "ladder-gamma", "ladder-full", "m2", "aae", "vat")


@dataclass
class Steps:
    """Each arm's budget in optimiser steps at train.batch_size (the best point of its validation curve is
    kept). The defaults are the passes that fit the Fashion-MNIST study in an hour on 2 CPU cores, as
    steps (540 a pass over its 54,000 training images at batch 100); configs/semi_gpu.toml holds the
    papers' (README, semi: each beside its paper's; `PAPER`)."""

    supervised: int = 1620  # ~16 passes over 10,000 labels, ~1,600 over 100
    pretrain: int = 1080  # the conv AE of pretrain-finetune
    finetune: int = 1620
    sen: int = 1080  # sen and sen+pl each
    ladder_gamma: int = 2160
    ladder_full: int = 4320  # the paper's 90,000; on Fashion-MNIST validation accuracy rose to ~0.75 by 5-11 passes of 12
    m1: int = 3240  # the VAE under M2
    m2: int = 3240
    aae: int = 1620
    vat: int = 2160


# The papers' step counts where they state one (at batch 100 on MNIST's 60,000 images: 600 a pass):
# Rasmus et al. 2015, 150 passes for both ladders; their Conv-Small baseline, 20 passes.
# VAT (Miyato et al.): 100 passes of 500 updates on MNIST in the authors' code (as its PyTorch ports
# run it: batch 100 labelled + 250 unlabelled; here 100 + 100).
PAPER = {"ladder_full": 90_000, "ladder_gamma": 90_000, "supervised": 12_000, "vat": 50_000}


@dataclass
class Rates:
    """Each arm's learning rate (the papers'; the supervised baseline's comes from `tune_lr`)."""

    pretrain: float = 3e-3
    finetune: float = 1e-3
    sen: float = 2e-3  # the SEN study's
    ladder: float = 2e-3  # Rasmus et al.: Adam 0.002
    m1: float = 1e-3
    m2: float = 1e-3
    aae: float = 5e-4
    vat: float = 1e-3  # Miyato et al.: Adam, 0.001


@dataclass
class SemiStudyConfig(StudyConfig):
    labels: tuple[int, ...] = (100, 1000)  # labelled training images in all, class-balanced
    ceiling: bool = True  # the supervised arm with every label too
    arms: tuple[str, ...] = ARMS
    # the supervised baseline's settings, every combination tried at the first seed, chosen on validation
    tune_arch: tuple[str, ...] = ("mlp", "conv-strided")  # its network (the ladder's archs) ...
    tune_noise: tuple[float, ...] = (0.0, 0.3)  # ... its noise (0: a plain network; 0.3: the ladder's)
    tune_lr: tuple[float, ...] = (1e-3, 3e-3)  # ... and learning rate
    tune_eps: tuple[float, ...] = (0.3, 1.0, 3.0)  # VAT's perturbation norm (the authors': 0.3 on MNIST)
    tune_budget: float = 1.0  # tuning cells train this fraction of their arm's steps
    val_small: int = 0  # > 0: the few-label protocol too, a labelled validation set of this many images
    rotate: float = 0.0  # augmentation of the labelled images, the same for every arm
    shift: int = 2
    hflip: bool = False  # clothes: true (configs/semi_fashion.toml); digits: false
    target: float = 0.80  # the bar: best arm's test accuracy at the smallest label count
    steps: Steps = field(default_factory=Steps)
    lr: Rates = field(default_factory=Rates)
    # the baseline: its network, noise and learning rate come from the tuning cells
    supervised: LadderConfig = field(default_factory=lambda: LadderConfig(name="ladder", variant="supervised"))
    gamma: LadderConfig = field(default_factory=lambda: LadderConfig(name="ladder", variant="gamma"))
    ladder: LadderConfig = field(default_factory=lambda: LadderConfig(name="ladder", variant="full"))
    m1: VAEConfig = field(default_factory=lambda: VAEConfig(name="vae", arch="dense", latent_dim=50, hidden=(600, 600)))
    m2: M2Config = field(default_factory=lambda: M2Config(name="m2", input="codes"))
    # CPU cuts: the AAE's networks 500 wide (the paper's 1000: ~3x the time), the SEN's the SEN study's
    vat: VATConfig = field(default_factory=lambda: VATConfig(name="vat"))
    aae: AAESSLConfig = field(default_factory=lambda: AAESSLConfig(name="aae-ssl", hidden=(500, 500), disc_hidden=(500, 500)))
    sen: SENConfig = field(default_factory=lambda: SENConfig(name="sen", clf_batch=64, channels=(16, 32, 64), hidden=64,
                                                             pl_start=150, pl_ramp=300))
    ae: ConvConfig = field(default_factory=lambda: ConvConfig(name="conv", latent_dim=64))
    # NCHW: the ladder's batch statistics over conv maps ran 1.7x slower per step in NHWC (channels_last)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=100, schedule="cosine", progress="off",
                                                                   channels_last=False))

    def check(self) -> None:
        super().check()
        unknown = set(self.arms) - set(ARMS)
        if unknown or "supervised" not in self.arms:
            raise ConfigError(f"arms: {', '.join(sorted(unknown)) or 'supervised missing'}; choose from "
                              f"{', '.join(ARMS)} (supervised is the reference every verdict needs)")
        if not self.labels or min(self.labels) <= 0 or not self.tune_lr or min(self.tune_lr) <= 0:
            raise ConfigError("labels and tune_lr must hold positive numbers")
        if not self.tune_noise or min(self.tune_noise) < 0 or not self.tune_eps or min(self.tune_eps) < 0:
            raise ConfigError("tune_noise and tune_eps must hold numbers >= 0")
        if not 0 < self.tune_budget <= 1 or self.val_small < 0:
            raise ConfigError(f"tune_budget={self.tune_budget}, val_small={self.val_small}: tune_budget in (0, 1] "
                              "(a fraction of the arm's steps), val_small >= 0 (0: off)")
        archs = set(typing.get_args(typing.get_type_hints(LadderConfig)["arch"]))
        if not self.tune_arch or not set(self.tune_arch) <= archs:
            raise ConfigError(f"tune_arch={list(self.tune_arch)}: choose from {', '.join(sorted(archs))}")
        if self.data.val_fraction <= 0:
            raise ConfigError("data.val_fraction must be > 0: every choice in this study is made on validation")
        check_steps(**{f"steps.{f.name}": getattr(self.steps, f.name) for f in dataclasses.fields(Steps)})
        for m in (self.supervised, self.gamma, self.ladder, self.m1, self.m2, self.aae, self.sen, self.ae, self.vat):
            m.check()


@register_study("semi")
class SemiStudy(Study):
    Config = SemiStudyConfig
    headline = "test_acc"

    def preset(self, cfg: SemiStudyConfig) -> SemiStudyConfig:
        return semi_report.quick_preset(cfg)

    def budgets(self, cfg: SemiStudyConfig) -> list[ArmBudget]:
        """Each arm's steps (the pretraining cells' too), beside the paper's; the probe trains the arm's model."""
        s, bs, aug = cfg.steps, cfg.train.batch_size, {"rotate": cfg.rotate, "shift": cfg.shift, "hflip": cfg.hflip}
        sup = dataclasses.replace(cfg.supervised, arch=cfg.tune_arch[0], noise=cfg.tune_noise[0])
        vat = dataclasses.replace(cfg.vat, eps=cfg.tune_eps[0])
        tb = cfg.tune_budget  # the tuning cells' own budget: their fraction of the arm's steps
        models = {"tune:supervised": (sup, max(1, round(s.supervised * tb)), cfg.tune_lr[0], "", ("tune:supervised",)),
                  "supervised": (sup, s.supervised, cfg.tune_lr[0], "supervised", None),
                  "pretrain:ae": (cfg.ae, s.pretrain, cfg.lr.pretrain, "pretrain", None),
                  "pretrain:m1": (cfg.m1, s.m1, cfg.lr.m1, "m1", None),
                  "pretrain-finetune": (None, s.finetune, cfg.lr.finetune, "finetune", None),
                  "sen": (cfg.sen, s.sen, cfg.lr.sen, "sen", ("sen",)),
                  "ladder-gamma": (cfg.gamma, s.ladder_gamma, cfg.lr.ladder, "ladder_gamma", None),
                  "ladder-full": (cfg.ladder, s.ladder_full, cfg.lr.ladder, "ladder_full", None),
                  "m2": (None, s.m2, cfg.lr.m2, "m2", None), "aae": (cfg.aae, s.aae, cfg.lr.aae, "aae", None),
                  "tune:vat": (vat, max(1, round(s.vat * tb)), cfg.lr.vat, "", ("tune:vat",)),
                  "vat": (vat, s.vat, cfg.lr.vat, "vat", None)}
        out = []
        for arm, (mcfg, steps, lr, key, match) in models.items():
            budget = arms.Budget(steps, lr, bs, cfg.budget)
            probe = None
            if mcfg is not None:  # M2 and the fine-tuning need a stored pretraining cell: no probe of their own
                def probe(splits, mcfg=mcfg, budget=budget, pre=arm.startswith("pretrain")):
                    data, shape = with_labels(splits.train, 100, cfg.seed), tuple(splits.train.x.shape[1:])
                    model = build_model(mcfg, shape, 10) if pre else \
                        arms.pooled(dataclasses.replace(mcfg, **aug), data, shape, 10, cfg.seed)
                    return model, data, budget.train(cfg.train)
            note = "tuning cells" if arm.startswith("tune:") else "" if key in PAPER else "not stated"
            out.append(ArmBudget(arm, steps, bs, PAPER.get(key), note,
                                 match or (arm,), probe))
        return out

    def cells(self, cfg: SemiStudyConfig) -> list[Cell]:
        _check_labels(cfg)  # before anything trains
        seeds = seeds_of(cfg)
        sizes = [*cfg.labels, *([0] if cfg.ceiling else [])]
        # Workers take ready cells in grid order: the arms that need no other cell first, longest first
        # (at the papers' budgets a ladder cell trains for hours: started last, it would end last alone).
        free = sorted((a for a in cfg.arms if a not in NEEDY), key=lambda a: -_steps(cfg, a))
        out = [Cell(a, s, n) for a in free for n in cfg.labels for s in seeds]
        out += [c for n in sizes for c in tune_cells(cfg, n)]
        out += [c for n in cfg.labels for c in vat_cells(cfg, n)]
        pre = {"m2": "pretrain:m1", "pretrain-finetune": "pretrain:ae"}
        out += [Cell(p, s, 0) for a, p in pre.items() if a in cfg.arms for s in seeds]
        out += [Cell(a, s, n) for n in cfg.labels for a in cfg.arms if a in NEEDY for s in seeds]
        return out + ([Cell("supervised", s, 0) for s in seeds] if cfg.ceiling else [])

    def needs(self, cfg: SemiStudyConfig, cell: Cell) -> list[Cell]:
        if cell.arm == "supervised":
            return tune_cells(cfg, cell.n)
        if cell.arm == "vat":
            return vat_cells(cfg, cell.n)
        pre = {"m2": "pretrain:m1", "pretrain-finetune": "pretrain:ae"}.get(cell.arm)
        return [Cell(pre, cell.seed, 0)] if pre else []

    def run_cell(self, cfg: SemiStudyConfig, cell: Cell, ctx: CellContext) -> dict:
        splits = ctx.data(cfg)
        data = with_labels(splits.train, cell.n, cell.seed)
        if cell.arm.startswith("pretrain:"):
            model, status = self._pretrain(cfg, cell, data, ctx.workdir)
            return state_arrays(model) | status
        small = with_labels(splits.val, cfg.val_small, cell.seed).labelled() if cfg.val_small else None
        setting = self._setting(cfg, cell, ctx, "val_acc")
        model, sel = self._train(cfg, cell, ctx, data, splits.val, setting, ctx.workdir, small)
        curve = sel.curve.array()
        best = int(np.argmax(curve[:, 1]))
        out = {"val_acc": float(curve[best, 1]), "best_step": int(curve[best, 0]),
               "n_labels": int((data.y >= 0).sum()), **sel.curve.result(arms.collapse(model, splits.val))}
        tune = cell.arm.startswith("tune:")
        if not tune:
            out["test_acc"] = arms.accuracy(model, splits.test)
            if cell.seed == cfg.seed and cell.n == cfg.labels[0]:
                out.update(semi_report.figure_arrays(cell.arm, model, splits.test, cfg.seed))
            if cell.n and hasattr(model, "refit_statistics"):  # the probe is reported at the label counts
                out.update(labelled_statistics(model, data.labelled(), splits))
        if small is not None:
            out.update(self._small(cfg, cell, ctx, data, splits, small, sel, model, setting, tune))
        return out

    def _small(self, cfg, cell, ctx, data, splits, small, sel, model, setting, tune: bool) -> dict:
        """The cell under the few-label protocol: its best point on the small validation set and, but in
        tuning cells, that point's test accuracy; a tuned arm whose setting the small set chooses
        otherwise trains that setting too (in the same cell, checkpointing in its own folder)."""
        other = self._setting(cfg, cell, ctx, "val_acc_small")
        pick = sel.small
        if not tune and other != setting:
            workdir = ctx.workdir / "small" if ctx.workdir is not None else None
            model, retrained = self._train(cfg, cell, ctx, data, splits.val, other, workdir, small)
            pick = retrained.small
        curve = pick.curve.array()
        best = int(np.argmax(curve[:, 1]))
        out = {"val_acc_small": float(curve[best, 1]), "best_step_small": int(curve[best, 0]),
               "val_small": len(small)}
        if not tune:
            model.load_state_dict(pick.best)
            out["test_acc_small"] = arms.accuracy(model, splits.test)
        return out

    def _setting(self, cfg: SemiStudyConfig, cell: Cell, ctx: CellContext, key: str):
        """A tuned arm's setting: a tuning cell's own, or the one its tuning cells' `key` chooses
        (supervised: (network, noise, lr); vat: eps); None for the other arms."""
        if cell.arm.startswith("tune:"):
            return tuned(cell.arm)
        cands = {"supervised": tune_cells, "vat": vat_cells}.get(cell.arm)
        if cands is None:
            return None
        return tuned(max(cands(cfg, cell.n), key=lambda c: ctx.deps[c.key][key]).arm)

    def _pretrain(self, cfg: SemiStudyConfig, cell: Cell, data: DeviceData, workdir=None):
        m1 = cell.arm == "pretrain:m1"
        budget = arms.Budget(cfg.steps.m1 if m1 else cfg.steps.pretrain, cfg.lr.m1 if m1 else cfg.lr.pretrain,
                             cfg.train.batch_size, cfg.budget)
        return arms.pretrain(cfg.m1 if m1 else cfg.ae, data, budget, cfg.train, cell.seed, workdir)

    def _train(self, cfg: SemiStudyConfig, cell: Cell, ctx: CellContext, data: DeviceData, val: DeviceData,
               setting, workdir, small):
        arm, e, r, bs, b = cell.arm, cfg.steps, cfg.lr, cfg.train.batch_size, cfg.budget
        aug = {"rotate": cfg.rotate, "shift": cfg.shift, "hflip": cfg.hflip}
        tb = cfg.tune_budget if arm.startswith("tune:") else 1.0  # tuning cells: a fraction of the steps
        if arm == "pretrain-finetune":
            ae = self._load(cfg.ae, data, ctx.deps[Cell("pretrain:ae", cell.seed, 0).key])
            return arms.train_finetune(ae, data, val, arms.Budget(e.finetune, r.finetune, bs, b), cfg.train,
                                       cell.seed, DataConfig(**aug), workdir, small)
        if arm.startswith("tune:supervised") or arm == "supervised":
            arch, noise, lr = setting
            model_cfg = dataclasses.replace(cfg.supervised, arch=arch, noise=noise)
            budget = arms.Budget(e.supervised, lr, bs, b * tb)
        elif arm.startswith("tune:vat") or arm == "vat":
            model_cfg, budget = dataclasses.replace(cfg.vat, eps=setting), arms.Budget(e.vat, r.vat, bs, b * tb)
        else:
            model_cfg, budget = {
                "sen": (dataclasses.replace(cfg.sen, pseudo=False), arms.Budget(e.sen, r.sen, bs, b)),
                "sen+pl": (dataclasses.replace(cfg.sen, pseudo=True), arms.Budget(e.sen, r.sen, bs, b)),
                "ladder-gamma": (cfg.gamma, arms.Budget(e.ladder_gamma, r.ladder, bs, b)),
                "ladder-full": (cfg.ladder, arms.Budget(e.ladder_full, r.ladder, bs, b)),
                "m2": (cfg.m2, arms.Budget(e.m2, r.m2, bs, b)),
                "aae": (cfg.aae, arms.Budget(e.aae, r.aae, bs, b))}[arm]
        prepare = None
        if arm == "m2":  # M2's copy of M1 has the study's M1 shape; its weights come from the pretraining cell
            model_cfg = dataclasses.replace(model_cfg, m1_latent=cfg.m1.latent_dim, m1_hidden=cfg.m1.hidden)
            vae = self._load(cfg.m1, data, ctx.deps[Cell("pretrain:m1", cell.seed, 0).key])
            prepare = lambda m: m.load_m1(vae)  # noqa: E731
        return arms.train_pooled(dataclasses.replace(model_cfg, **aug), data, val, budget, cfg.train, cell.seed, prepare,
                                 workdir, small)

    @staticmethod
    def _load(model_cfg, data: DeviceData, row: dict):
        """The autoencoder a pretraining cell stored (its weights), on the data's device."""
        return load_state_arrays(build_model(model_cfg, tuple(data.x.shape[1:]), 10), row).to(data.device)

    def summarize(self, cfg: SemiStudyConfig, results: Results, out) -> dict:
        return semi_report.summarize(cfg, results, out)


def labelled_statistics(model, labelled: DeviceData, splits) -> dict:
    """The ladder's accuracies with the authors' test-time statistics (an exact clean pass over the
    labelled rows) in place of ours (a running average over clean unlabelled batches): on validation,
    which chooses between them, and on test. The model keeps its own statistics afterwards."""
    kept = {k: v.clone() for k, v in model.named_buffers() if k.startswith("run_")}
    model.refit_statistics(labelled.batch(slice(None))["x"])
    out = {"val_acc_labelled_stats": arms.accuracy(model, splits.val),
           "test_acc_labelled_stats": arms.accuracy(model, splits.test)}
    for k, v in kept.items():
        model.get_buffer(k).copy_(v)
    return out


NEEDY = ("supervised", "vat", "m2", "pretrain-finetune")  # arms whose cells wait for tuning or pretraining cells


def _steps(cfg: SemiStudyConfig, arm: str) -> int:
    """An arm's training steps (its grid position: longest first)."""
    e = cfg.steps
    return {"sen": e.sen, "sen+pl": e.sen, "ladder-gamma": e.ladder_gamma, "ladder-full": e.ladder_full,
            "aae": e.aae}.get(arm, 0)


def with_labels(train: DeviceData, n: int, seed: int) -> DeviceData:
    """`train` with a seeded class-balanced `n` labels kept (n // classes each; 0 = every label)."""
    if n == 0:
        return train
    y = hide_labels(train.y.cpu().numpy(), n // (int(train.y.max()) + 1), seed=seed)
    return DeviceData(train.x, torch.as_tensor(y, device=train.device))


def _check_labels(cfg: SemiStudyConfig) -> None:
    """Every label count must be a multiple of the classes, at most the smallest class of the training split."""
    ds = dataset_of(cfg)
    y = np.bincount(ds.y_train[split_rows(len(ds.y_train), cfg.data.val_fraction, cfg.seed)[0]])
    for n in cfg.labels:
        if n % len(y) or n // len(y) > y.min():
            raise ConfigError(f"labels={n}: need a multiple of the {len(y)} classes and at most "
                              f"{len(y) * int(y.min())} (the smallest class of the training split, times {len(y)})")
