"""Shared Encoding Networks (seed 003): few-label test accuracy of the SEN against its ablations and baselines.

    aelab study sen configs/sen_fashion.toml            # Fashion-MNIST, 100/500/1000 labels, 3 seeds
    aelab study sen data=digits quick=true              # minutes on a CPU

Arms (paired seeds, test accuracy mean and 95% CI): for every label count (class-balanced, in all)
`sen` (AE + GAN + classifier rounds), `sen+pl` (with pseudo-labels), `supervised` (the classifier
round alone: encoder + head on the same labelled pool, same steps) and `pretrain-finetune` (the AE
round alone, then the classifier round: the few-label study's baseline, written here minimally).
At the smallest label count, ablations of `sen+pl`: no GAN, no AE round, no augmentation, direct
generator. Figures: accuracy vs labels; the seed's milestone grid (noised inputs, their denoised
outputs, generated images) after the epochs in `milestones`; a latent morphing GIF between
generated items; the directed generator's grid, one row per class. The batch-size check trains the
GAN (AE + GAN rounds, undirected) on the same number of images at each of `batch_sizes` and scores
its samples by the Frechet distance to test images in a 20-component PCA of pixel space (lower is
better); the seed found batch size 4 best on MNIST. Only `n_train` training images are used (0 = all),
drawn from the training split after `data.val_fraction` is held out: the bar's arm is chosen by its
validation accuracy and reported on test.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import stats
from ..data.device import DeviceData, hide_labels, split_rows
from ..engine import fit
from ..errors import ConfigError
from ..models import build_model
from ..models.sen import SEN, SENConfig
from ..report import plots
from .sen_gan import batch_size_summary, frechet_pca, gan_frechet, subsample  # noqa: F401 (frechet_pca: tests)
from ..convergence import classifier_collapse, qualify
from .base import Cell, CellContext, Results, Study, StudyConfig, dataset_of, register_study, seeds_of
from .budget import ArmBudget, Curve, check_steps, probe_rows, status_counts, train_cfg

ABLATIONS = {"no-gan": {"gan_round": False}, "no-ae": {"ae_round": False},
             "no-aug": {"rotate": 0.0, "shift": 0, "hflip": False}, "direct": {"route": "direct"}}


@dataclass
class SENStudyConfig(StudyConfig):
    model: SENConfig = field(default_factory=lambda: SENConfig(name="sen"))
    labels: tuple[int, ...] = (100, 500, 1000)  # labelled images in all, class-balanced
    n_train: int = 10000  # training images used (labelled + unlabelled); 0 = all
    ablations: bool = True
    baselines: bool = True
    # optimiser steps of every arm (each stage of pretrain-finetune) at train.batch_size: 20 passes over
    # the 10,000 n_train images at batch 128 (the budget before steps; sen_fashion.toml: 500 = 4 x 8,000 / 64)
    steps: int = 1560
    milestones: tuple[int, ...] = (1, 2, 4)  # passes after which the seed's figure is drawn
    batch_sizes: tuple[int, ...] = (4, 32, 128)  # the GAN batch-size check; () = skip
    bs_images: int = 4000  # images each batch-size arm trains on (one pass)
    target: float = 0.80  # the bar: test accuracy at the smallest label count

    def check(self) -> None:
        super().check()
        self.model.check()
        check_steps(steps=self.steps)
        if not self.labels or min(self.labels) <= 0 or min(self.batch_sizes, default=1) <= 0:
            raise ConfigError("labels and batch_sizes must hold positive numbers")
        if self.n_train < 0 or self.bs_images <= 0:
            raise ConfigError("n_train must be >= 0 and bs_images > 0")
        if self.model.name != "sen":
            raise ConfigError(f"model={self.model.name}: the sen study trains SEN arms; keep model=sen and set "
                              "model.* fields (model.channels, model.hidden, ...) to change it")
        if self.data.val_fraction <= 0:
            raise ConfigError("data.val_fraction must be > 0: the bar's arm is chosen on the validation split")


@register_study("sen")
class SENStudy(Study):
    Config = SENStudyConfig
    headline = "test_acc"

    def preset(self, cfg: SENStudyConfig) -> SENStudyConfig:  # minutes on a CPU: fewer images, epochs, labels, seeds
        return dataclasses.replace(cfg, n_train=min(cfg.n_train or 3000, 3000), seeds=min(cfg.seeds, 2),
                                   budget=cfg.budget * 0.3,
                                   labels=cfg.labels[:2], bs_images=min(cfg.bs_images, 1200),
                                   batch_sizes=cfg.batch_sizes[:2])

    def budgets(self, cfg: SENStudyConfig) -> list[ArmBudget]:
        tcfg, k = train_cfg(cfg.train, cfg.steps, cfg.budget), 10

        def probe(splits):
            data = with_labels(splits.train, 10 * k, k, cfg.seed)
            model = build_model(cfg.model, splits.train.x.shape[1:], k)
            model.set_pool(data.labelled().x, data.labelled().y)
            return model, data, tcfg
        stages = "two stages of it (pretrain-finetune)"
        return [ArmBudget("SEN arms and baselines", cfg.steps, cfg.train.batch_size, None,
                          f"seed 003 states none; {stages}", ("sen", "supervised", "pretrain", "no-", "direct"), probe),
                ArmBudget("gan-batch-size", 0, 0, None, f"one pass over bs_images at each batch size")]

    def cells(self, cfg: SENStudyConfig) -> list[Cell]:
        _check_labels(cfg)  # before anything trains
        out = [Cell(arm, seed, n) for n in cfg.labels for arm in _arms(cfg, n) for seed in seeds_of(cfg)]
        return out + [Cell("gan-batch-size", seed, bs) for bs in cfg.batch_sizes for seed in seeds_of(cfg)]

    def run_cell(self, cfg: SENStudyConfig, cell: Cell, ctx: CellContext) -> dict:
        splits = ctx.data(cfg)
        train, k = subsample(splits.train, cfg.n_train, cfg.seed), ctx.dataset(cfg).num_classes
        if cell.arm == "gan-batch-size":
            return {"fd": gan_frechet(cfg, train, splits.test, k, cell.n, cell.seed)}
        shown = cell.seed == cfg.seed and cell.n == cfg.labels[0] and cell.arm == "sen+pl"
        figures: dict = {}
        seen = probe_rows(splits.val)  # validation accuracy on a fixed 1,000 rows: the curve
        curve = Curve("val.acc", higher_is_better=True, metric=lambda: _accuracy(model_of[0], seen))
        model_of: list = []
        model = _train_arm(cfg, train, cell.n, k, cell.seed, _arms(cfg, cell.n)[cell.arm],
                           _milestones(cfg, splits.test, figures) if shown else None, curve, model_of)
        out = {"test_acc": _accuracy(model, splits.test), "val_acc": _accuracy(model, splits.val),
               **curve.result(classifier_collapse(_predict(model, seen)))}
        return out | (figures | _figure_arrays(cfg, model) if shown else {})

    def summarize(self, cfg: SENStudyConfig, results: Results, out: Path) -> dict:
        arms = [a for a in results.values("arm") if a != "gan-batch-size"]
        acc = {a: {str(n): stats.summary(results.column("test_acc", arm=a, n=n)) for n in results.where(arm=a).values("n")}
               for a in arms}
        counts = status_counts(results)
        metrics = {"accuracy": acc, "status": counts, "comparisons": _comparisons(results, cfg.labels, counts),
                   "bar": _bar(results, cfg, counts)}
        _figures(results, cfg, out)
        if cfg.batch_sizes:
            metrics["batch_size"] = batch_size_summary(results, cfg, out)
        return metrics


def _check_labels(cfg: SENStudyConfig) -> None:
    """Every label count must be a multiple of the classes, at most the smallest class of the pool."""
    ds = dataset_of(cfg)
    rows = split_rows(len(ds.y_train), cfg.data.val_fraction, cfg.seed)[0]
    y = torch.as_tensor(ds.y_train[rows])
    if cfg.n_train and cfg.n_train < len(y):  # the same draw as _subsample
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.n_train].sort().values]
    k = ds.num_classes
    for n in cfg.labels:
        if n % k or n // k > int(torch.bincount(y).min()):
            raise ConfigError(f"labels={n}: need a multiple of {k} classes, at most the smallest class")


def _arms(cfg: SENStudyConfig, n: int) -> dict[str, dict]:
    """Model-config changes per arm; "stages" lists the rounds trained one after another."""
    arms = {"sen": {"pseudo": False}, "sen+pl": {"pseudo": True}}
    if cfg.baselines:
        arms["supervised"] = {"ae_round": False, "gan_round": False, "pseudo": False}
        arms["pretrain-finetune"] = {"stages": [{"ae_round": True, "gan_round": False, "clf_round": False},
                                                {"ae_round": False, "gan_round": False, "clf_round": True}],
                                     "pseudo": False}
    if cfg.ablations and n == cfg.labels[0]:
        arms.update({a: {"pseudo": True, **kw} for a, kw in ABLATIONS.items()})
    return arms


def _train_arm(cfg: SENStudyConfig, train: DeviceData, n: int, k: int, seed: int, kw: dict, on_epoch=None,
               on_eval=None, model_of: list | None = None) -> SEN:
    """Train one arm with one seed on `n` labels (n // k per class, the rest of `train` unlabelled);
    `on_eval` gets its curve points (the model is put in `model_of` for it to read)."""
    kw = dict(kw)
    stages = kw.pop("stages", [{}])
    data = with_labels(train, n, k, seed)
    torch.manual_seed(seed)
    model = build_model(dataclasses.replace(cfg.model, **kw, **stages[0]), train.x.shape[1:], k)
    model.to(train.device).set_pool(data.labelled().x, data.labelled().y)
    if model_of is not None:
        model_of.append(model)
    for i, stage in enumerate(stages):  # players() reads the config, so a stage switches rounds on and off
        model.cfg = dataclasses.replace(model.cfg, **stage)
        last = i == len(stages) - 1  # the curve follows the stage that trains the classifier
        fit(model, data, train_cfg(cfg.train, cfg.steps, cfg.budget), seed=seed,
            on_epoch=(lambda row: on_epoch(model, row)) if on_epoch else None, on_eval=on_eval if last else None)
    return model


def _milestones(cfg: SENStudyConfig, test: DeviceData, figures: dict):
    """An on_epoch callback keeping the seed's figure (noised, denoised, generated) at the milestones."""
    x = test.batch(slice(0, 10))["x"]

    def keep(model: SEN, row: dict) -> None:
        if row["epoch"] in cfg.milestones:
            model.eval()
            with torch.no_grad():
                noised = model.view_noise(model.view(x))
                grid = [noised, torch.sigmoid(model.reconstruct(noised)), torch.sigmoid(model.generate(10))]
            model.train()
            figures[f"milestone.{row['epoch']}"] = torch.cat(grid).float()
            figures[f"milestone_steps.{row['epoch']}"] = row["step"]
    return keep


@torch.no_grad()
def _figure_arrays(cfg: SENStudyConfig, model: SEN) -> dict:
    """The directed generator's grid (one row per class) and a latent morph through four generated items."""
    model.eval()
    k, out = model.num_classes, {}
    torch.manual_seed(cfg.seed)
    if model.cfg.directed:
        labels = torch.arange(k).repeat_interleave(10)
        out["directed_grid"] = torch.sigmoid(model.generate(10 * k, labels)).float()
    e, _ = model.sample_codes(4)
    ends = torch.cat([e, e[:1]])  # a loop through four generated items
    t = torch.linspace(0, 1, 12, device=e.device)[:-1, None]
    path = torch.cat([a + t * (b - a) for a, b in zip(ends[:-1], ends[1:])])
    out["morph"] = torch.sigmoid(model.decode(path)).float()
    return out


def with_labels(train: DeviceData, n: int, k: int, seed: int) -> DeviceData:
    """`train` with the labels of a seeded, class-balanced `n` images kept (n // k per class), the rest -1."""
    y = torch.as_tensor(hide_labels(train.y.cpu().numpy(), n // k, seed=seed), device=train.device)
    return DeviceData(train.x, y)


@torch.no_grad()
def _predict(model: SEN, data: DeviceData) -> "np.ndarray":
    """Predicted classes (N,) in eval mode; the model's mode is restored (curves read it mid-training)."""
    was = model.training
    model.eval()
    pred = torch.cat([model.classify(data.batch(slice(s, s + 1024))["x"]).argmax(1) for s in range(0, len(data), 1024)])
    model.train(was)
    return pred.cpu().numpy()


def _accuracy(model: SEN, data: DeviceData) -> float:
    return float((_predict(model, data) == data.y.cpu().numpy()).mean())


def _comparisons(results: Results, labels: tuple[int, ...], counts: dict) -> dict:
    """Paired differences (same seeds) and the verdicts read off their intervals."""
    out, arms = {}, set(results.values("arm"))

    def versus(a: str, b: str, n: int, better: str, same: str) -> dict:
        d = stats.paired(results.column("test_acc", arm=a, n=n), results.column("test_acc", arm=b, n=n))
        v = stats.verdict(d)
        return {"diff": d, "verdict": qualify(same if v == "no measurable difference" else better.format(v), (a, b),
                                              counts)}

    for n in labels:
        for a, b in [("sen+pl", "supervised"), ("sen+pl", "pretrain-finetune"), ("sen", "supervised"),
                     ("sen+pl", "sen")]:
            if {a, b} <= arms:
                out[f"{a} - {b} @{n}"] = versus(a, b, n, f"{a} is {{}} than {b}", f"{a} vs {b}: no measurable difference")
    for a in ABLATIONS:
        if a in arms:
            out[f"sen+pl - {a} @{labels[0]}"] = versus("sen+pl", a, labels[0], "removing it: the full system is {}",
                                                       f"{a}: no measurable difference")
    return out


def _bar(results: Results, cfg: SENStudyConfig, counts: dict) -> dict:
    """The best SEN arm at the fewest labels, chosen by validation accuracy, reported on test."""
    n = cfg.labels[0]
    cands = [a for a in ("sen", "sen+pl") if results.where(arm=a, n=n).rows]
    best = max(cands, key=lambda a: np.mean(results.column("val_acc", arm=a, n=n)))
    mean = float(np.mean(results.column("test_acc", arm=best, n=n)))
    return {"labels": n, "target": cfg.target, "best_arm": best, "chosen_by": "validation accuracy",
            "val_mean": float(np.mean(results.column("val_acc", arm=best, n=n))), "mean": mean,
            "met": mean >= cfg.target,
            "verdict": qualify(f"{best} (chosen on validation): {mean:.3f} test accuracy with {n} labels, "
                               f"{'meets' if mean >= cfg.target else 'misses'} the {cfg.target:.2f} bar", [best], counts)}


def _figures(results: Results, cfg: SENStudyConfig, out: Path) -> None:
    fig = out / "figures"
    arms = [a for a in ("sen", "sen+pl", "supervised", "pretrain-finetune") if a in results.values("arm")]
    ys = {a: (np.array([np.mean(results.column("test_acc", arm=a, n=n)) for n in cfg.labels]),
              np.array([np.std(results.column("test_acc", arm=a, n=n)) for n in cfg.labels])) for a in arms}
    plots.save(plots.metric_vs(list(cfg.labels), ys, "labelled images (in all)", "test accuracy",
                               "SEN: test accuracy vs labels (mean ± std over seeds)", logx=True),
               fig / "accuracy_vs_labels.png")
    shown = results.one(arm="sen+pl", n=cfg.labels[0], seed=cfg.seed)
    for e in cfg.milestones:
        if f"milestone.{e}" in shown:
            title = f"after {e} epoch(s), {shown[f'milestone_steps.{e}']} batches: noised / denoised / generated"
            plots.save(plots.image_grid(shown[f"milestone.{e}"], 10, title), fig / f"milestone_epoch{e}.png")
    if "directed_grid" in shown:
        plots.save(plots.image_grid(shown["directed_grid"], 10, "directed generator: one row per class"),
                   fig / "directed_grid.png")
    plots.save_gif(list(shown["morph"]), fig / "latent_morph.gif")
