"""few-label: unsupervised (denoising) AE pretraining for a classifier with few labels (seed 002, 004 Q2/Q8).

Cells: per seed, a `pretrain` cell trains a denoising AE on every training image (labels unused) and
stores its weights; then per label budget (k labels per class, and fractions of the training set)
one cell per route: a classifier three ways (from scratch, the pretrained encoder fine-tuned, the
frozen encoder with a linear probe) and, as baselines, logistic regression on pixels and on PCA.
Test accuracy, mean ± CI over seeds (the labelled subset is the same for every route of a seed); the
best route is chosen by validation accuracy. Q8: with 10% of the labels, how close does the
pretrained classifier come to the one trained on all of them (paired difference)?

    aelab study few-label data=fashion-mnist            # ~30+ min on 2 CPU cores (estimate); quick=true less
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import stats
from ..classify import MODES, accuracy, predict, train_classifier
from ..config import TrainConfig
from ..convergence import classifier_collapse, qualify
from ..data.device import hide_labels, split_rows
from ..engine import fit
from ..errors import ConfigError
from ..models import build_model
from ..report import plots
from .base import (Cell, CellContext, Results, Study, StudyConfig, dataset_of, load_state_arrays, register_study,
                   seeds_of, state_arrays)
from .budget import ArmBudget, Curve, check_steps, model_probe, status_counts, train_cfg

BASELINES = ("logreg_pixels", "logreg_pca")


@dataclass
class FewLabelConfig(StudyConfig):
    model: str = "deep"  # the pretrained AE (an MLP: fast on CPUs; conv works too)
    latent_dim: int = 64
    labels_per_class: tuple[int, ...] = (10, 100, 1000)  # budgets larger than a class are skipped
    fractions: tuple[float, ...] = (0.1, 1.0)  # budgets as fractions of the training set
    # classifier steps at clf.batch_size, the same at every label count (README, few-label: it was 5
    # passes or at least 300 steps, i.e. 300 to 2,105 steps on Fashion-MNIST; 700 keeps the CPU time)
    clf_steps: int = 700
    pca_dim: int = 50
    # AE pretraining steps at train.batch_size: 10 passes over Fashion-MNIST's 54,000 training images
    # at batch 128 (the budget before steps; the whole study fits a CPU session)
    steps: int = 4210
    # denoising pretraining: what the AE sees is masked (dropout of 20% of the pixels)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(corrupt="dropout", corrupt_level=0.2,
                                                                   progress="off"))
    clf: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, batch_size=128, schedule="cosine",
                                                                 progress="off"))

    def check(self) -> None:
        super().check()
        self.clf.check()
        check_steps(steps=self.steps, clf_steps=self.clf_steps)
        if min(self.labels_per_class, default=1) <= 0 or not all(0 < f <= 1 for f in self.fractions):
            raise ConfigError("labels_per_class must be > 0 and fractions in (0, 1]")
        if self.data.val_fraction <= 0:
            raise ConfigError("data.val_fraction must be > 0: the best route is chosen on the validation split")
        if not self.labels_per_class and not self.fractions:
            raise ConfigError("give at least one label budget (labels_per_class or fractions)")


def budgets(cfg: FewLabelConfig, y: np.ndarray) -> list[tuple[str, int, float]]:
    """(name, k, fraction) for each budget that fits the training labels `y` (k per class <= smallest class)."""
    smallest = int(np.bincount(y).min())
    out = [(f"k{k}", k, 0.0) for k in cfg.labels_per_class if k <= smallest]
    return out + [(f"p{round(f * 100)}", 0, f) for f in cfg.fractions]


def labelled_rows(y: np.ndarray, k: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded class-balanced labelled subset (k per class, or a fraction of each class)."""
    if fraction >= 1.0:
        return np.arange(len(y))
    return np.flatnonzero(hide_labels(y, k, fraction, seed) >= 0)


@dataclass(frozen=True)
class BudgetCell(Cell):
    budget: str = ""  # "k10" (10 labels per class) or "p10" (10% of the training set)


def build_ae(cfg: FewLabelConfig, shape, num_classes: int):
    mcfg = build_model(cfg.model, shape).cfg
    mcfg.latent_dim = cfg.latent_dim
    return build_model(mcfg, shape, num_classes)


def route_accuracy(cfg: FewLabelConfig, cell: BudgetCell, ctx: CellContext) -> dict:
    """Validation and test accuracy of one route at one budget (the seed's labelled rows)."""
    splits, ds = ctx.data(cfg, seed=cell.seed), ctx.dataset(cfg)
    k, frac = next((k, f) for name, k, f in budgets(cfg, ctx.data(cfg).train.y.cpu().numpy()) if name == cell.budget)
    rows = labelled_rows(splits.train.y.cpu().numpy(), k, frac, cell.seed)
    if cell.arm in MODES:
        ae = load_state_arrays(build_ae(cfg, ds.shape, ds.num_classes), ctx.deps[BudgetCell("pretrain", cell.seed).key])
        curve = Curve("val.acc", higher_is_better=True)  # validation accuracy: what the route is chosen on
        clf = train_classifier(ae, splits.train.subset(rows), cell.arm, train_cfg(cfg.clf, cfg.clf_steps, cfg.budget),
                               num_classes=ds.num_classes, seed=cell.seed, val=splits.val, on_eval=curve)
        return {"n_labels": len(rows), "val_acc": accuracy(clf, splits.val), "test_acc": accuracy(clf, splits.test),
                **curve.result(classifier_collapse(predict(clf, splits.val).numpy()))}
    from sklearn.decomposition import PCA  # scikit-learn where a cell needs it: the workers of other
    from sklearn.linear_model import LogisticRegression  # studies never import it

    x = {part: getattr(splits, part).x.flatten(1).float().div(255).cpu().numpy() for part in ("train", "val", "test")}
    y = {part: getattr(splits, part).y.cpu().numpy() for part in ("train", "val", "test")}
    f = lambda a: a  # noqa: E731  logreg on pixels, or on a PCA fitted to every training image (no labels)
    if cell.arm == "logreg_pca":
        f = ctx.cached(("few-label-pca", cfg.data.name, cell.seed, cfg.pca_dim), lambda: PCA(
            min(cfg.pca_dim, x["train"].shape[1]), random_state=cell.seed).fit(x["train"])).transform
    clf = LogisticRegression(max_iter=300, random_state=cell.seed).fit(f(x["train"][rows]), y["train"][rows])
    return {"n_labels": len(rows), **{f"{p}_acc": float(clf.score(f(x[p]), y[p])) for p in ("val", "test")}}


@register_study("few-label")
class FewLabelStudy(Study):
    Config = FewLabelConfig
    headline = "test_acc"

    def preset(self, cfg: FewLabelConfig) -> FewLabelConfig:
        return replace(cfg, budget=cfg.budget * 0.2)

    def budgets(self, cfg: FewLabelConfig) -> list[ArmBudget]:
        pre = train_cfg(cfg.train, cfg.steps, cfg.budget)
        clf = train_cfg(cfg.clf, cfg.clf_steps, cfg.budget)

        def probe(mode):
            def make(splits):
                from ..classify import Classifier
                shape, k = tuple(splits.train.x.shape[1:]), int(splits.train.y.max()) + 1
                return Classifier(build_ae(cfg, shape, k), k, mode), splits.train, clf
            return make
        return [ArmBudget("pretrain", cfg.steps, cfg.train.batch_size, None, "seed 004 states none",
                          probe=model_probe(lambda shape: build_ae(cfg, shape, 10), pre))] + \
            [ArmBudget(m, cfg.clf_steps, cfg.clf.batch_size, None, "", probe=probe(m)) for m in MODES] + \
            [ArmBudget(b, 0, 0, None, "scikit-learn, no steps") for b in BASELINES]

    def cells(self, cfg: FewLabelConfig) -> list[Cell]:
        plan = budgets(cfg, train_labels(cfg))  # budgets larger than the smallest class are skipped
        return [BudgetCell("pretrain", s) for s in seeds_of(cfg)] + \
            [BudgetCell(r, s, budget=name) for s in seeds_of(cfg) for name, _, _ in plan for r in (*MODES, *BASELINES)]

    def needs(self, cfg: FewLabelConfig, cell: Cell) -> list[Cell]:
        return [BudgetCell("pretrain", cell.seed)] if cell.arm in MODES else []

    def run_cell(self, cfg: FewLabelConfig, cell: BudgetCell, ctx: CellContext) -> dict:
        if cell.arm != "pretrain":
            return route_accuracy(cfg, cell, ctx)
        splits, ds = ctx.data(cfg, seed=cell.seed), ctx.dataset(cfg)
        torch.manual_seed(cell.seed)  # a denoising AE on every training image, labels unused
        ae = build_ae(cfg, ds.shape, ds.num_classes)
        curve = Curve("val.loss")
        fit(ae, splits.train, train_cfg(cfg.train, cfg.steps, cfg.budget), val=splits.val, seed=cell.seed,
            on_eval=curve)
        return state_arrays(ae) | curve.result()

    def summarize(self, cfg: FewLabelConfig, results: Results, out: Path) -> dict:
        plan = budgets(cfg, train_labels(cfg))
        result = summarise(results, plan, cfg)
        draw(result, plan, out)
        return result


def train_labels(cfg: FewLabelConfig) -> np.ndarray:
    """The labels of the study seed's training split (which budgets fit is decided on it)."""
    y = dataset_of(cfg).y_train
    return y[split_rows(len(y), cfg.data.val_fraction, cfg.seed)[0]]


def summarise(results: Results, plan, cfg: FewLabelConfig) -> dict:
    """Per budget and route, test accuracy over seeds; the fewest-labels verdict and Q8's gap, with the
    route chosen by validation accuracy and reported on test."""
    routes = (*MODES, *BASELINES)
    skipped = [f"k{k}" for k in cfg.labels_per_class if f"k{k}" not in {p[0] for p in plan}]
    res: dict = {"routes": list(routes), "skipped_budgets": skipped,  # larger than the smallest class
                 "status": status_counts(results)}
    test = lambda name, r: results.column("test_acc", arm=r, budget=name)  # noqa: E731  (paired by seed)
    val = lambda name, r: float(np.mean(results.column("val_acc", arm=r, budget=name)))  # noqa: E731
    for name, _, _ in plan:
        res[name] = {"n_labels": results.column("n_labels", arm="logreg_pixels", budget=name)[0],
                     **{r: stats.summary(test(name, r)) for r in routes}, "val_mean": {r: val(name, r) for r in routes}}
    first = plan[0][0]
    best = max(MODES, key=lambda r: val(first, r))
    diff = stats.paired(test(first, best), test(first, "logreg_pixels"))
    res["fewest_labels"] = {"budget": first, "best_route": best, "chosen_by": "validation accuracy",
                            "vs_logreg_pixels": diff,
                            "verdict": qualify(f"{best} vs logistic regression on pixels with "
                                               f"{res[first]['n_labels']} labels: {stats.verdict(diff)}",
                                               ["pretrain", best], res["status"])}
    if "p10" in res and "p100" in res:  # seed 004 Q8 in numbers
        pre = max(("finetune", "probe"), key=lambda r: val("p10", r))
        gap = stats.paired(test("p10", pre), test("p100", "scratch"))
        res["q8"] = {"pretrained_route": pre, "gap_to_scratch_all_labels": gap,
                     "answer": qualify(f"with 10% of the labels, {pre} reaches {res['p10'][pre]['mean']:.3f} against "
                               f"{res['p100']['scratch']['mean']:.3f} for scratch on all labels "
                               f"(difference {gap['mean']:+.3f}, 95% CI {gap['ci95'][0]:+.3f} "
                               f"to {gap['ci95'][1]:+.3f})", ["pretrain", pre, "scratch"], res["status"])}
    return res


def draw(res: dict, plan, out: Path) -> None:
    x = [res[name]["n_labels"] for name, _, _ in plan]
    names = [n for n, _, _ in plan]
    ys = {r: (np.array([res[n][r]["mean"] for n in names]), np.array([res[n][r]["std"] for n in names]))
          for r in res["routes"]}
    plots.save(plots.metric_vs(x, ys, "labelled training images", "test accuracy",
                               "Test accuracy vs number of labels (mean ± std over seeds)", logx=True),
               out / "figures" / "accuracy_vs_labels.png")
