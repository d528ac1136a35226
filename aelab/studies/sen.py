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
better); the seed found batch size 4 best on MNIST. Only `n_train` training images are used (0 = all).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from .. import stats
from ..data import load_dataset
from ..data.device import DeviceData, hide_labels, pick_device, to_device
from ..engine import fit
from ..errors import ConfigError
from ..models import build_model
from ..models.sen import SEN, SENConfig
from ..report import plots
from .base import StudyConfig, note, register_study

ABLATIONS = {"no-gan": {"gan_round": False}, "no-ae": {"ae_round": False},
             "no-aug": {"rotate": 0.0, "shift": 0, "hflip": False}, "direct": {"route": "direct"}}


@dataclass
class SENStudyConfig(StudyConfig):
    model: SENConfig = field(default_factory=lambda: SENConfig(name="sen"))
    labels: tuple[int, ...] = (100, 500, 1000)  # labelled images in all, class-balanced
    n_train: int = 10000  # training images used (labelled + unlabelled); 0 = all
    ablations: bool = True
    baselines: bool = True
    milestones: tuple[int, ...] = (1, 2, 4)  # epochs after which the seed's figure is drawn
    batch_sizes: tuple[int, ...] = (4, 32, 128)  # the GAN batch-size check; () = skip
    bs_images: int = 4000  # images each batch-size arm trains on (one pass)
    target: float = 0.80  # the bar: test accuracy at the smallest label count

    def check(self) -> None:
        super().check()
        self.model.check()
        if not self.labels or min(self.labels) <= 0 or min(self.batch_sizes, default=1) <= 0:
            raise ConfigError("labels and batch_sizes must hold positive numbers")
        if self.n_train < 0 or self.bs_images <= 0:
            raise ConfigError("n_train must be >= 0 and bs_images > 0")
        if self.quick:  # minutes on a CPU: fewer images, epochs, labels and seeds
            self.n_train, self.seeds = min(self.n_train or 3000, 3000), min(self.seeds, 2)
            self.train.epochs, self.labels = min(self.train.epochs, 3), self.labels[:2]
            self.bs_images, self.batch_sizes = min(self.bs_images, 1200), self.batch_sizes[:2] or ()


@register_study("sen")
class SENStudy:
    Config = SENStudyConfig

    def run(self, cfg: SENStudyConfig, out: Path) -> dict:
        ds = load_dataset(cfg.data.name, cfg.data.data_dir or None, cfg.data.download)
        device = pick_device(cfg.train.device)
        k = len(ds.classes)
        splits = to_device(ds, device, 0.0, cfg.seed)
        train = _subsample(splits.train, cfg.n_train, cfg.seed)
        for n in cfg.labels:
            if n % k or n // k > int(torch.bincount(train.y).min()):
                raise ConfigError(f"labels={n}: need a multiple of {k} classes, at most the smallest class")
        t0, acc, figure_model = time.perf_counter(), {}, None
        for n in cfg.labels:
            for arm, kw in _arms(cfg, n).items():
                for i in range(cfg.seeds):
                    snap = self._milestones(cfg, splits.test, out) if (arm, n, i) == ("sen+pl", cfg.labels[0], 0) else None
                    model, a = _train_arm(cfg, train, splits.test, n, k, cfg.seed + i, kw, snap)
                    acc.setdefault(arm if arm in ABLATIONS else f"{arm}@{n}", []).append(a)
                    note(f"sen: {arm} with {n} labels, seed {i + 1}/{cfg.seeds}: test accuracy {a:.3f}")
                    figure_model = model if snap else figure_model
        runs = sum(len(v) for v in acc.values())
        metrics = {"accuracy": {a: stats.summary(v) for a, v in acc.items()},
                   "seconds_per_run": (time.perf_counter() - t0) / max(runs, 1)}
        metrics["comparisons"] = _comparisons(acc, cfg.labels)
        metrics["bar"] = _bar(acc, cfg)
        self._figures(acc, cfg, figure_model, out)
        if cfg.batch_sizes:
            metrics["batch_size"] = _batch_size_check(cfg, train, splits.test, k, out)
        return metrics

    def _milestones(self, cfg: SENStudyConfig, test: DeviceData, out: Path):
        """model -> an on_epoch callback drawing the seed's figure (noised, denoised, generated) at milestones."""
        x = test.batch(slice(0, 10))["x"]

        def make(model: SEN):
            return lambda row: draw(model, row)

        def draw(model: SEN, row: dict) -> None:
            if row["epoch"] in cfg.milestones:
                model.eval()
                with torch.no_grad():
                    noised = model.view_noise(model.view(x))
                    grid = [noised, torch.sigmoid(model.reconstruct(noised)), torch.sigmoid(model.generate(10))]
                model.train()
                title = f"after {row['epoch']} epoch(s), {row['step']} batches: noised / denoised / generated"
                plots.save(plots.image_grid(_np(torch.cat(grid)), 10, title),
                           out / "figures" / f"milestone_epoch{row['epoch']}.png")
        return make

    def _figures(self, acc: dict, cfg: SENStudyConfig, model: SEN | None, out: Path) -> None:
        fig = out / "figures"
        arms = sorted({a.split("@")[0] for a in acc if "@" in a})
        ys = {a: (np.array([np.mean(acc[f"{a}@{n}"]) for n in cfg.labels]),
                  np.array([np.std(acc[f"{a}@{n}"]) for n in cfg.labels])) for a in arms}
        plots.save(plots.metric_vs(cfg.labels, ys, "labelled images (in all)", "test accuracy",
                                   "SEN: test accuracy vs labels (mean ± std over seeds)", logx=True),
                   fig / "accuracy_vs_labels.png")
        if model is None:
            return
        model.eval()
        k = model.num_classes
        torch.manual_seed(cfg.seed)
        with torch.no_grad():
            if model.cfg.directed:
                labels = torch.arange(k).repeat_interleave(10)
                plots.save(plots.image_grid(_np(torch.sigmoid(model.generate(10 * k, labels))), 10,
                                            "directed generator: one row per class"), fig / "directed_grid.png")
            e, _ = model.sample_codes(4)
            ends = torch.cat([e, e[:1]])  # a loop through four generated items
            t = torch.linspace(0, 1, 12, device=e.device)[:-1, None]
            path = torch.cat([a + t * (b - a) for a, b in zip(ends[:-1], ends[1:])])
            plots.save_gif(list(_np(torch.sigmoid(model.decode(path)))), fig / "latent_morph.gif")


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


def _train_arm(cfg: SENStudyConfig, train: DeviceData, test: DeviceData, n: int, k: int, seed: int,
               kw: dict, make_callback=None) -> tuple[SEN, float]:
    """Train one arm with one seed on `n` labels; returns the model and its test accuracy."""
    kw = dict(kw)
    stages = kw.pop("stages", [{}])
    data = with_labels(train, n, k, seed)
    torch.manual_seed(seed)
    model = build_model(dataclasses.replace(cfg.model, **kw, **stages[0]), train.x.shape[1:], k)
    model.to(train.device).set_pool(data.labelled().x, data.labelled().y)
    on_epoch = make_callback(model) if make_callback else None
    for stage in stages:  # players() reads the config, so a stage switches rounds on and off
        model.cfg = dataclasses.replace(model.cfg, **stage)
        fit(model, data, dataclasses.replace(cfg.train, progress="off"), seed=seed, on_epoch=on_epoch)
    return model, _accuracy(model, test)


def with_labels(train: DeviceData, n: int, k: int, seed: int) -> DeviceData:
    """`train` with the labels of a seeded, class-balanced `n` images kept (n // k per class), the rest -1."""
    y = torch.as_tensor(hide_labels(train.y.cpu().numpy(), n // k, seed=seed), device=train.device)
    return DeviceData(train.x, y)


@torch.no_grad()
def _accuracy(model: SEN, test: DeviceData) -> float:
    model.eval()
    hits = sum(int((model.classify(test.batch(slice(s, s + 1024))["x"]).argmax(1) == test.y[s:s + 1024]).sum())
               for s in range(0, len(test), 1024))
    return hits / len(test)


def _comparisons(acc: dict, labels: tuple[int, ...]) -> dict:
    """Paired differences (same seeds) and the verdicts read off their intervals."""
    out = {}
    for n in labels:
        for a, b in [("sen+pl", "supervised"), ("sen+pl", "pretrain-finetune"), ("sen", "supervised"),
                     ("sen+pl", "sen")]:
            if f"{a}@{n}" in acc and f"{b}@{n}" in acc:
                d = stats.paired(acc[f"{a}@{n}"], acc[f"{b}@{n}"])
                out[f"{a} - {b} @{n}"] = {"diff": d, "verdict": f"{a} is {stats.verdict(d)} than {b}"
                                          if stats.verdict(d) != "no measurable difference" else
                                          f"{a} vs {b}: no measurable difference"}
    full = acc.get(f"sen+pl@{labels[0]}")
    for a in ABLATIONS:
        if a in acc and full:
            d = stats.paired(full, acc[a])
            out[f"sen+pl - {a} @{labels[0]}"] = {"diff": d, "verdict": f"removing it: the full system is {stats.verdict(d)}"
                                                 if stats.verdict(d) != "no measurable difference"
                                                 else f"{a}: no measurable difference"}
    return out


def _bar(acc: dict, cfg: SENStudyConfig) -> dict:
    n = cfg.labels[0]
    best = max((a for a in acc if a.startswith("sen") and a.endswith(f"@{n}")), key=lambda a: np.mean(acc[a]))
    mean = float(np.mean(acc[best]))
    return {"labels": n, "target": cfg.target, "best_arm": best, "mean": mean, "met": mean >= cfg.target,
            "verdict": f"{best}: {mean:.3f} test accuracy with {n} labels, "
                       f"{'meets' if mean >= cfg.target else 'misses'} the {cfg.target:.2f} bar"}


def _subsample(data: DeviceData, n: int, seed: int) -> DeviceData:
    if not n or n >= len(data):
        return data
    g = torch.Generator().manual_seed(seed)
    return data.subset(torch.randperm(len(data), generator=g)[:n].sort().values)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.float().cpu().numpy()


def frechet_pca(a: np.ndarray, b: np.ndarray, comps: int = 20) -> float:
    """Frechet distance between Gaussians fitted to a and b (N, D) in b's top-`comps` PCA space."""
    mu = b.mean(0)
    _, _, vt = np.linalg.svd(b - mu, full_matrices=False)
    pa, pb = (a - mu) @ vt[:comps].T, (b - mu) @ vt[:comps].T
    ca, cb = np.cov(pa, rowvar=False), np.cov(pb, rowvar=False)
    root = linalg.sqrtm(ca @ cb).real
    return float(((pa.mean(0) - pb.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * root))


def _batch_size_check(cfg: SENStudyConfig, train: DeviceData, test: DeviceData, k: int, out: Path) -> dict:
    """Train the GAN at each batch size on the same `bs_images` images; score samples by PCA-Frechet."""
    sub = _subsample(train, cfg.bs_images, cfg.seed)
    real = _np(test.batch(slice(0, 1000))["x"]).reshape(min(1000, len(test)), -1)
    fd: dict[str, list[float]] = {}
    for bs in cfg.batch_sizes:
        for i in range(cfg.seeds):
            torch.manual_seed(cfg.seed + i)
            m = build_model(dataclasses.replace(cfg.model, clf_round=False, directed=False), train.x.shape[1:], k)
            fit(m, sub, dataclasses.replace(cfg.train, epochs=1, batch_size=bs, progress="off"), seed=cfg.seed + i)
            m.eval()
            fake = _np(torch.sigmoid(m.generate(len(real)))).reshape(len(real), -1)
            fd.setdefault(str(bs), []).append(frechet_pca(fake, real))
    res = {f"fd@{bs}": stats.summary(v) for bs, v in fd.items()}
    best = min(fd, key=lambda b: np.mean(fd[b]))
    small, large = str(min(cfg.batch_sizes)), str(max(cfg.batch_sizes))
    if small != large:
        d = stats.paired(fd[small], fd[large])
        res[f"fd@{small} - fd@{large}"] = d
        res["verdict"] = (f"lowest mean Frechet distance at batch size {best}; batch size {small} vs {large}: "
                          f"{stats.verdict(d, higher_is_better=False)}")
    x = [int(b) for b in fd]
    plots.save(plots.metric_vs(x, {"PCA-Frechet": (np.array([np.mean(fd[str(b)]) for b in x]),
                                                   np.array([np.std(fd[str(b)]) for b in x]))},
                               "batch size", "Frechet distance (lower is better)",
                               f"GAN samples vs batch size ({cfg.bs_images} images each)", logx=True),
               out / "figures" / "batch_size.png")
    return res
