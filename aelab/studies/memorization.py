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
from ..data import load_dataset
from ..data.device import DeviceData, pick_device, to_device
from ..engine import fit
from ..errors import ConfigError
from ..models import build_model
from ..models.adversarial import AdversarialConfig
from ..models.conv import ConvConfig
from . import memorization_measures as ms
from .base import StudyConfig, note, register_study
from .memorization_report import report

QUICK = dict(seeds=3, sizes=(1000, 5000), lambdas=(-3.0, 0.0, 3.0), bounded=("hinge",), steps=200,
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
    steps: int = 250  # classifier steps per run, whatever N (epochs = steps * batch / N): the 45-min budget
    max_epochs: int = 200
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
        if not self.sizes or min(self.sizes) < 0 or 0.0 not in self.lambdas:
            raise ConfigError("sizes must be >= 0 (0 = all) and lambdas must include 0 (plain training)")
        if self.data.val_fraction <= 0:
            raise ConfigError("data.val_fraction must be > 0: the baselines are tuned on the validation split")
        if not set(self.bounded) <= {"hinge", "reversal", "layernorm"} or not 0 < self.noise_fraction < 1:
            raise ConfigError("bounded must be from hinge, reversal, layernorm; noise_fraction in (0, 1)")
        self.model.check()


def _arms(cfg: MemorizationConfig, tuned: dict[str, dict]) -> dict[str, dict]:
    """Arm name -> model-config overrides (and `weight_decay`); 'plain' (lam = 0) is the reference."""
    arms: dict[str, dict] = {}
    for lam in sorted(cfg.lambdas):
        name = "plain" if lam == 0 else f"lam={lam:+g}"
        arms[name] = {"lam": abs(lam), "mode": "plus" if lam < 0 else "minus"}
    top = max(cfg.lambdas)
    for form in cfg.bounded if top > 0 else ():
        arms[f"{form} lam={top:g}"] = ({"lam": top, "layernorm": True} if form == "layernorm"
                                       else {"lam": top, "mode": form})
    return arms | tuned


def _train(cfg: MemorizationConfig, over: dict, data: DeviceData, seed: int, test: DeviceData | None = None):
    """One engine run of the adversarial model on `data`; returns the model and, with `test`, its curves."""
    over = dict(over)
    wd = over.pop("weight_decay", 0.0)
    mcfg = dataclasses.replace(cfg.model, **over)
    epochs = int(np.clip(round(cfg.steps * cfg.train.batch_size / len(data)), 1, cfg.max_epochs))
    tcfg = dataclasses.replace(cfg.train, epochs=epochs, weight_decay=wd, progress="off")
    torch.manual_seed(seed)
    model = build_model(mcfg, tuple(data.x.shape[1:]), int(data.y.max()) + 1)
    curve: list[dict] = []

    def on_epoch(row: dict) -> None:  # the test set draws curves only; nothing is tuned on it
        p, _ = ms.per_example(model, test)
        curve.append({"epoch": row["epoch"], "ce": row["train.classifier.ce"], "R": row["train.classifier.R"],
                      "test_acc": float((p.argmax(1) == test.y.cpu().numpy()).mean())})

    fit(model, data, tcfg, seed=seed, on_epoch=on_epoch if test is not None else None)
    return model, curve


def _tune(cfg: MemorizationConfig, train: DeviceData, val: DeviceData, seed: int) -> tuple[dict, dict]:
    """Each baseline's grid, the same size and epoch budget, scored by validation accuracy."""
    grids = {"weight decay": [{"weight_decay": v} for v in cfg.tune_wd],
             "dropout": [{"dropout": v} for v in cfg.tune_dropout],
             "vib": [{"vib_beta": v} for v in cfg.tune_vib]}
    best, scores = {}, {}
    for name, grid in grids.items():
        accs = []
        for over in grid:
            model, _ = _train(cfg, over, train, seed)
            probs, _ = ms.per_example(model, val)
            accs.append(float((probs.argmax(1) == val.y.cpu().numpy()).mean()))
        best[name] = grid[int(np.argmax(accs))]
        scores[name] = {"grid": grid, "val_acc": accs, "chosen": best[name]}
    return best, scores


def _measure(model, train: DeviceData, test: DeviceData, cfg: MemorizationConfig, ref: dict,
             seed: int) -> tuple[dict, torch.Tensor]:
    """Every per-run metric of a trained classifier (see the module docstring)."""
    p_tr, ce_tr = ms.per_example(model, train)
    p_te, ce_te = ms.per_example(model, test)
    y_tr, y_te = train.y.cpu().numpy(), test.y.cpu().numpy()
    acc_tr, acc_te = float((p_tr.argmax(1) == y_tr).mean()), float((p_te.argmax(1) == y_te).mean())
    m = min(len(ce_tr), len(ce_te))
    rng = np.random.default_rng(seed)
    mia = ms.mia_advantage(rng.permutation(ce_tr)[:m], rng.permutation(ce_te)[:m])
    err, recons = ms.train_probe(model, train, test, cfg.probe_features, seed)
    out = {"test_acc": acc_te, "train_acc": acc_tr, "gap_acc": acc_tr - acc_te,
           "gap_ce": float(ce_te.mean() - ce_tr.mean()), "ece": ms.ece(p_te, y_te), "mia_adv": mia,
           "probe_mse": err, "probe_score": ms.probe_scale(err, ref["class_mean_mse"], ref["ae_mse"])}
    return out, recons


def _subset(train: DeviceData, n: int, seed: int) -> DeviceData:
    if n == 0 or n >= len(train):
        return train
    g = torch.Generator().manual_seed(seed)
    return train.subset(torch.randperm(len(train), generator=g)[:n].sort().values)


def _reference_ae(cfg: MemorizationConfig, train: DeviceData, test: DeviceData, seed: int) -> float:
    """The probe scale's 1: test error of a plain autoencoder with the same code size (aelab's conv AE,
    trained on every training image for `ref_steps_factor` x the steps) through its own decoder. Once
    per study: an AE fit to N=1000 images overfits, a poor unit. A learned decoder usually reads a
    code better than the closed-form probe does, so the scores tend to err low."""
    epochs = max(1, round(cfg.steps * cfg.ref_steps_factor * cfg.train.batch_size / len(train)))
    torch.manual_seed(seed)
    ae_cfg = ConvConfig(name="conv", latent_dim=cfg.model.latent_dim, recon=cfg.model.recon,
                        channels=cfg.model.channels)
    ae = build_model(ae_cfg, tuple(train.x.shape[1:]))
    fit(ae, train, dataclasses.replace(cfg.train, epochs=epochs, progress="off"), seed=seed)
    return ms.own_reconstruction_error(ae, test)


def _noise_run(cfg, over, sub: DeviceData, test: DeviceData, seed: int, classes: int) -> dict:
    """Train on labels with `noise_fraction` made wrong: how many wrong labels are learnt, and clean test accuracy."""
    y_noisy, mask = ms.noisy_labels(sub.y.cpu().numpy(), cfg.noise_fraction, classes, seed)
    noisy = DeviceData(sub.x, torch.as_tensor(y_noisy, device=sub.device))
    model, _ = _train(cfg, over, noisy, seed)
    p, _ = ms.per_example(model, noisy)
    pt, _ = ms.per_example(model, test)
    return {"noise_memorised": float((p.argmax(1) == y_noisy)[mask].mean()),
            "noise_test_acc": float((pt.argmax(1) == test.y.cpu().numpy()).mean())}


@register_study("memorization")
class Memorization:
    Config = MemorizationConfig

    def run(self, cfg: MemorizationConfig, out: Path) -> dict:
        if cfg.quick:
            cfg = dataclasses.replace(cfg, **QUICK, noise_sizes=QUICK["sizes"][:1])
        device = pick_device(cfg.train.device)
        ds = load_dataset(cfg.data.name, cfg.data.data_dir or None, cfg.data.download)
        splits = to_device(ds, device, cfg.data.val_fraction, cfg.seed)
        classes = ds.num_classes
        sizes = list(dict.fromkeys(n if 0 < n < len(splits.train) else 0 for n in cfg.sizes))
        records: dict[str, dict[str, list[dict]]] = {}
        ae_err = _reference_ae(cfg, splits.train, splits.test, cfg.seed)
        extras: dict = {"tuning": {}, "curves": {}, "recons": {}}
        for n in sizes:
            key = f"N={n or len(splits.train)}"
            tuned, extras["tuning"][key] = _tune(cfg, _subset(splits.train, n, cfg.seed), splits.val, cfg.seed)
            arms = _arms(cfg, tuned)
            records[key] = {a: [] for a in arms}
            for s in range(cfg.seeds):
                self._one_seed(cfg, arms, n, key, cfg.seed + s, splits, classes, records, extras, ae_err,
                               s == 0 and n == sizes[-1])
                note(f"memorization {key}: seed {s + 1}/{cfg.seeds} done ({len(arms)} arms)")
        return report(cfg, records, extras, out)

    def _one_seed(self, cfg, arms, n, key, seed, splits, classes, records, extras, ae_err, show: bool) -> None:
        """Every arm on one seed's training subset; `show`: keep curves and probe reconstructions."""
        sub = _subset(splits.train, n, seed)
        cm_err, means = ms.class_mean_error(sub, splits.test, classes)
        ref = {"class_mean_mse": cm_err, "ae_mse": ae_err}
        noise_sizes = {m if 0 < m < len(splits.train) else 0 for m in cfg.noise_sizes}
        for arm, over in arms.items():
            model, curve = _train(cfg, over, sub, seed, splits.test if show else None)
            rec, recons = _measure(model, sub, splits.test, cfg, ref, seed)
            rec |= {f"ref_{k}": v for k, v in ref.items()}
            if n in noise_sizes:
                rec |= _noise_run(cfg, over, sub, splits.test, seed, classes)
            records[key][arm].append(rec)
            if show:
                extras["curves"][arm], extras["recons"][arm] = curve, recons
        if show:
            extras["test_y"] = splits.test.y.cpu().numpy()
            extras["recons"] = {"original": splits.test.x.float() / 255, "class mean": means[splits.test.y],
                                **extras["recons"]}
