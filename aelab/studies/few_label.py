"""few-label: unsupervised (denoising) AE pretraining for a classifier with few labels (seed 002, 004 Q2/Q8).

Per seed: pretrain a denoising AE on every training image, labels unused; then for each label budget
(k labels per class, and fractions of the training set) train a classifier three ways (from scratch,
the pretrained encoder fine-tuned, the frozen encoder with a linear probe) and, as baselines in the
same run, logistic regression on pixels and on PCA. Test accuracy, mean ± CI over seeds (the labelled
subset is the same for every route of a seed). Q8: with 10% of the labels, how close does the
pretrained classifier come to the one trained on all of them (paired difference)?

    aelab study few-label data=fashion-mnist            # ~30+ min on 2 CPU cores (estimate); quick=true less
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

from .. import stats
from ..classify import MODES, accuracy, train_classifier, with_min_steps
from ..config import TrainConfig
from ..data import load_dataset
from ..data.device import hide_labels, pick_device, to_device
from ..engine import fit
from ..errors import ConfigError
from ..models import build_model
from ..report import plots
from .base import StudyConfig, each_seed, register_study

BASELINES = ("logreg_pixels", "logreg_pca")


@dataclass
class FewLabelConfig(StudyConfig):
    model: str = "deep"  # the pretrained AE (an MLP: fast on CPUs; conv works too)
    latent_dim: int = 64
    labels_per_class: tuple[int, ...] = (10, 100, 1000)  # budgets larger than a class are skipped
    fractions: tuple[float, ...] = (0.1, 1.0)  # budgets as fractions of the training set
    clf_min_steps: int = 300  # classifier: clf.epochs over the labelled subset, or more epochs so
    # that a 100-image subset still gets this many optimiser steps
    pca_dim: int = 50
    min_steps: int = 2000  # AE pretraining: at least this many steps (small data sets get more epochs)
    # denoising pretraining: what the AE sees is masked (dropout of 20% of the pixels)
    # 10 epochs and batch 128: the whole study on Fashion-MNIST fits a CPU session (3 seeds x 5 budgets x 3 routes)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, corrupt="dropout",
                                                                   corrupt_level=0.2, progress="off"))
    clf: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, lr=1e-3, batch_size=128,
                                                                 schedule="cosine", progress="off"))

    def check(self) -> None:
        super().check()
        self.clf.check()
        if min(self.labels_per_class, default=1) <= 0 or not all(0 < f <= 1 for f in self.fractions):
            raise ConfigError("labels_per_class must be > 0 and fractions in (0, 1]")
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


def logreg(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, seed: int) -> float:
    clf = LogisticRegression(max_iter=300, random_state=seed).fit(x_tr, y_tr)
    return float(clf.score(x_te, y_te))


def one_seed(cfg: FewLabelConfig, ds, seed: int, plan) -> dict[str, dict[str, float]]:
    """{budget: {route: test accuracy}} for one seed."""
    splits = to_device(ds, pick_device(cfg.train.device), cfg.data.val_fraction, seed)
    torch.manual_seed(seed)
    mcfg = build_model(cfg.model, ds.shape).cfg
    mcfg.latent_dim = cfg.latent_dim
    ae = build_model(mcfg, ds.shape, ds.num_classes)
    # every training image; the labels are never read
    fit(ae, splits.train, with_min_steps(cfg.train, len(splits.train), cfg.min_steps), seed=seed)
    y_tr = splits.train.y.cpu().numpy()
    x_tr = splits.train.x.flatten(1).float().div(255).cpu().numpy()  # (N, D) for the baselines
    x_te = splits.test.x.flatten(1).float().div(255).cpu().numpy()
    pca = PCA(min(cfg.pca_dim, x_tr.shape[1]), random_state=seed).fit(x_tr)  # unsupervised, all images
    p_tr, p_te = pca.transform(x_tr), pca.transform(x_te)
    out: dict[str, dict[str, float]] = {}
    for name, k, frac in plan:
        rows = labelled_rows(y_tr, k, frac, seed)
        sub = splits.train.subset(rows)
        res = {mode: accuracy(train_classifier(ae, sub, mode, cfg.clf, num_classes=ds.num_classes,
                                               min_steps=cfg.clf_min_steps, seed=seed), splits.test)
               for mode in MODES}
        res["logreg_pixels"] = logreg(x_tr[rows], y_tr[rows], x_te, ds.y_test, seed)
        res["logreg_pca"] = logreg(p_tr[rows], y_tr[rows], p_te, ds.y_test, seed)
        res["n_labels"] = len(rows)
        out[name] = res
    return out


@register_study("few-label")
class FewLabelStudy:
    Config = FewLabelConfig

    def run(self, cfg: FewLabelConfig, out: Path) -> dict:
        if cfg.quick:
            cfg.train.epochs, cfg.clf.epochs, cfg.clf_min_steps = min(cfg.train.epochs, 5), 2, 150
            cfg.min_steps = min(cfg.min_steps, 500)
        ds = load_dataset(cfg.data.name, cfg.data.data_dir or None, cfg.data.download)
        probe = to_device(ds, "cpu", cfg.data.val_fraction, cfg.seed).train.y.numpy()
        plan = budgets(cfg, probe)
        per_seed = [one_seed(cfg, ds, seed, plan) for _, seed in each_seed(cfg, "few-label")]
        result = summarise(per_seed, plan, cfg)
        draw(result, plan, out)
        return result


def summarise(per_seed: list[dict], plan, cfg: FewLabelConfig) -> dict:
    """Per budget and route, test accuracy over seeds; the fewest-labels verdict; Q8's gap."""
    routes = (*MODES, *BASELINES)
    skipped = [f"k{k}" for k in cfg.labels_per_class if f"k{k}" not in {p[0] for p in plan}]
    res: dict = {"routes": list(routes), "skipped_budgets": skipped}  # larger than the smallest class
    for name, _, _ in plan:
        res[name] = {"n_labels": per_seed[0][name]["n_labels"],
                     **{r: stats.summary([s[name][r] for s in per_seed]) for r in routes}}
    first = plan[0][0]
    best = max(MODES, key=lambda r: res[first][r]["mean"])
    diff = stats.paired([s[first][best] for s in per_seed], [s[first]["logreg_pixels"] for s in per_seed])
    res["fewest_labels"] = {"budget": first, "best_route": best, "vs_logreg_pixels": diff,
                            "verdict": f"{best} vs logistic regression on pixels with {res[first]['n_labels']} "
                                       f"labels: {stats.verdict(diff)}"}
    if "p10" in res and "p100" in res:  # seed 004 Q8 in numbers
        pre = max(("finetune", "probe"), key=lambda r: res["p10"][r]["mean"])
        gap = stats.paired([s["p10"][pre] for s in per_seed], [s["p100"]["scratch"] for s in per_seed])
        res["q8"] = {"pretrained_route": pre, "gap_to_scratch_all_labels": gap,
                     "answer": f"with 10% of the labels, {pre} reaches {res['p10'][pre]['mean']:.3f} against "
                               f"{res['p100']['scratch']['mean']:.3f} for scratch on all labels "
                               f"(difference {gap['mean']:+.3f}, 95% CI {gap['ci95'][0]:+.3f} "
                               f"to {gap['ci95'][1]:+.3f})"}
    return res


def draw(res: dict, plan, out: Path) -> None:
    x = [res[name]["n_labels"] for name, _, _ in plan]
    names = [n for n, _, _ in plan]
    ys = {r: (np.array([res[n][r]["mean"] for n in names]), np.array([res[n][r]["std"] for n in names]))
          for r in res["routes"]}
    plots.save(plots.metric_vs(x, ys, "labelled training images", "test accuracy",
                               "Test accuracy vs number of labels (mean ± std over seeds)", logx=True),
               out / "figures" / "accuracy_vs_labels.png")
