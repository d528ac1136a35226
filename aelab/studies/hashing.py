"""Semantic hashing: an autoencoder's noisy logistic codes as binary hashes, against LSH, PCA-ITQ and a CNN.

The `semhash` model (Salakhutdinov & Hinton 2009) is trained on the training set; its codes, rounded
to bits, are the index, and the test images are the queries, ranked by Hamming distance
(`aelab.retrieval`: packed bits, popcount, expected metrics under random tie order). Baselines at the
same bit count, fitted in the same run on the same seed: random-projection LSH and PCA-ITQ on the
pixels, and the rounded logistic penultimate layer of a CNN classifier (Guo & Li 2015; it uses the
labels, the others do not). `tune=true` picks the noise std and layer sizes by mAP on a split of the
training set before the seeds run.

    aelab study hashing data=fashion-mnist            # ~10-15 min on 2 idle CPU cores (estimate)
    aelab study hashing data=fashion-mnist bits=64 tune=true
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import stats
from ..config import TrainConfig
from ..data.device import DeviceData
from ..engine import encode_all, fit
from ..errors import ConfigError
from ..models import build_model
from ..models.hashing import SemHashConfig
from ..report import plots
from ..retrieval import evaluate_hash, nearest
from .base import Cell, CellContext, Results, Study, StudyConfig, register_study, seeds_of
from .hashing_baselines import ITQ, LSH
from .hashing_classifier import apply_batched, images, train_classifier

METHODS = ("ae", "itq", "lsh", "cnn")


@dataclass
class HashingConfig(StudyConfig):
    bits: int = 32  # code length of every method (16, 32, 64 ...)
    hidden: tuple[int, ...] = (512, 256)  # the AE's two hidden layers below the code
    # std of the noise on the code layer's inputs while training; 32: Fashion-MNIST's validation mAP
    # rose with it up to 32 and was flat from 32 to 64 (README, hashing)
    noise_std: float = 32.0
    k: int = 100  # precision@k
    radius: int = 2  # Hamming ball for the lookup statistics
    cnn_epochs: int = 3  # the CNN-hash baseline's training epochs
    tune: bool = False  # choose noise_std, hidden by mAP on a split of the training set (train.epochs // 3 each)
    tune_noise: tuple[float, ...] = (8.0, 16.0, 32.0)
    tune_hidden: tuple[tuple[int, ...], ...] = ((512, 256), (256, 128))
    tune_fraction: float = 0.2  # the training images held out as queries while tuning
    show_queries: int = 8  # rows of the neighbours page
    neighbours: int = 10  # neighbours shown per query
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, progress="off"))

    def check(self) -> None:
        super().check()
        if not 1 <= self.bits <= 255:
            raise ConfigError("bits must be in [1, 255]")
        if self.k <= 0 or self.radius < 0 or self.cnn_epochs <= 0:
            raise ConfigError("k and cnn_epochs must be > 0 and radius >= 0")
        if self.noise_std < 0 or any(s < 0 for s in self.tune_noise):
            raise ConfigError("noise_std and tune_noise must be >= 0")
        if not self.tune_noise or not self.tune_hidden or not 0 < self.tune_fraction < 1:
            raise ConfigError("tune_noise and tune_hidden must be non-empty, tune_fraction in (0, 1)")


def build_ae(shape, cfg: HashingConfig, hidden, noise: float):
    return build_model(SemHashConfig(name="semhash", latent_dim=cfg.bits, hidden=tuple(hidden), noise_std=noise), shape)


def flat(data: DeviceData) -> np.ndarray:
    return images(data).flatten(1).cpu().numpy()


def tune_points(cfg: HashingConfig) -> list[tuple[tuple[int, ...], float]]:
    return [(tuple(h), noise) for h in cfg.tune_hidden for noise in cfg.tune_noise]


def tune_score(cfg: HashingConfig, train: DeviceData, shape, point: int) -> float:
    """mAP of one (hidden, noise_std) point: fit on part of the training set, query with the rest."""
    hidden, noise = tune_points(cfg)[point]
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed)).to(train.device)
    n_q = max(1, int(cfg.tune_fraction * len(train)))
    fit_part, held = train.subset(perm[n_q:]), train.subset(perm[:n_q])
    torch.manual_seed(cfg.seed)
    model = build_ae(shape, cfg, hidden, noise)
    fit(model, fit_part, replace(cfg.train, epochs=max(1, cfg.train.epochs // 3)), seed=cfg.seed)
    res = evaluate_hash(encode_all(model, held).numpy() > 0.5, held.y.cpu().numpy(),
                        encode_all(model, fit_part).numpy() > 0.5, fit_part.y.cpu().numpy(), cfg.k)
    return res["map"]


def method_bits(cfg: HashingConfig, method: str, splits, shape, ncls: int, seed: int, setting: dict):
    """(train bits, test bits) of one method for one seed, and extra numbers (the AE's saturation)."""
    tr, te = splits.train, splits.test
    if method == "ae":
        torch.manual_seed(seed)
        ae = build_ae(shape, cfg, setting["hidden"], setting["noise_std"])
        fit(ae, tr, cfg.train, seed=seed)
        z_te = encode_all(ae, te).numpy()
        # fraction of test code units within 0.1 of 0 or 1: how cleanly the noise made them bits
        return encode_all(ae, tr).numpy() > 0.5, z_te > 0.5, {"saturation": float((np.minimum(z_te, 1 - z_te) < 0.1).mean())}
    if method == "cnn":
        cnn = train_classifier(tr, shape, ncls, cfg.train, cfg.cnn_epochs, seed, cfg.bits, "sigmoid")
        return (*(apply_batched(cnn.features, images(d)).numpy() > 0.5 for d in (tr, te)), {})
    x_tr, x_te = flat(tr), flat(te)
    h = (ITQ if method == "itq" else LSH)(cfg.bits, seed=seed).fit(x_tr)
    return h.transform(x_tr), h.transform(x_te), {}


def neighbour_images(tr_bits, te_bits, x_tr: torch.Tensor, x_te: torch.Tensor, cfg: HashingConfig) -> np.ndarray:
    """Each row a test query, then its nearest index images by Hamming distance: (q * (n + 1), C, H, W) uint8."""
    q = min(cfg.show_queries, len(x_te))
    idx = nearest(te_bits[:q], tr_bits, cfg.neighbours)  # (q, n)
    return torch.cat([torch.cat([x_te[i:i + 1], x_tr[torch.as_tensor(idx[i])]]) for i in range(q)]).cpu().numpy()


@dataclass(frozen=True)
class TuneCell(Cell):
    point: int = 0  # index into tune_points(cfg)


@register_study("hashing")
class HashingStudy(Study):
    Config = HashingConfig
    headline = "map"

    def preset(self, cfg: HashingConfig) -> HashingConfig:
        return replace(cfg, train=replace(cfg.train, epochs=min(cfg.train.epochs, 3)), cnn_epochs=1)

    def cells(self, cfg: HashingConfig) -> list[Cell]:
        tune = [TuneCell("tune", cfg.seed, point=i) for i in range(len(tune_points(cfg)))] if cfg.tune else []
        return tune + [Cell(m, s) for s in seeds_of(cfg) for m in METHODS]

    def needs(self, cfg: HashingConfig, cell: Cell) -> list[Cell]:
        return [c for c in self.cells(cfg) if isinstance(c, TuneCell)] if cell.arm == "ae" else []

    def run_cell(self, cfg: HashingConfig, cell: Cell, ctx: CellContext) -> dict:
        ds, splits = ctx.dataset(cfg), ctx.data(cfg, val_fraction=0.0)  # index = the whole training set
        ncls = max(ds.num_classes, int(ds.y_train.max()) + 1)
        if isinstance(cell, TuneCell):
            return {"map": tune_score(cfg, splits.train, ds.shape, cell.point)}
        setting = self.setting(cfg, [ctx.deps[c.key]["map"] for c in self.needs(cfg, cell)])
        tr_bits, te_bits, extra = method_bits(cfg, cell.arm, splits, ds.shape, ncls, cell.seed, setting)
        res = evaluate_hash(te_bits, splits.test.y.cpu().numpy(), tr_bits, splits.train.y.cpu().numpy(), cfg.k,
                            cfg.radius)
        if cell.seed == cfg.seed:
            res["neighbours"] = neighbour_images(tr_bits, te_bits, splits.train.x, splits.test.x, cfg)
        return res | extra

    def setting(self, cfg: HashingConfig, scores: list[float]) -> dict:
        if not scores:
            return {"noise_std": cfg.noise_std, "hidden": list(cfg.hidden)}
        hidden, noise = tune_points(cfg)[int(np.argmax(scores))]
        return {"noise_std": noise, "hidden": list(hidden)}

    def summarize(self, cfg: HashingConfig, results: Results, out: Path) -> dict:
        keys = [k for k, v in results.one(arm="ae", seed=cfg.seed).items()
                if isinstance(v, float) and k not in ("saturation",)]
        res: dict = {m: {k: stats.summary(results.column(k, arm=m)) for k in keys} for m in METHODS}
        diff = stats.paired(results.column("map", arm="ae"), results.column("map", arm="itq"))
        res["ae_minus_itq_map"] = diff
        res["verdict"] = (f"AE hash vs PCA-ITQ mAP at {cfg.bits} bits: {stats.verdict(diff)} "
                          f"({diff['mean']:+.4f}, 95% CI [{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}], "
                          f"{diff['n']} paired seeds)")
        res["ae_code_saturation"] = stats.summary(results.column("saturation", arm="ae"))
        tuned = None
        if cfg.tune:
            scores = results.column("map", arm="tune")
            tuned = self.setting(cfg, scores) | {"val_map": {f"noise={n} hidden={list(h)}": s for (h, n), s
                                                             in zip(tune_points(cfg), scores)}}
        setting = self.setting(cfg, results.column("map", arm="tune") if cfg.tune else [])
        res["setup"] = {"bits": cfg.bits, **setting, "k": cfg.k, "radius": cfg.radius, "tuned": tuned,
                        "ties": "expected AP and precision@k under a uniformly random order of equal distances"}
        for m in METHODS:
            grid = results.one(arm=m, seed=cfg.seed)["neighbours"].astype(np.float32) / 255
            title = f"{m}: query, then its {cfg.neighbours} nearest training images ({cfg.bits} bits)"
            plots.save(plots.image_grid(grid, nrow=cfg.neighbours + 1, title=title), out / "figures" / f"neighbours_{m}.png")
        return res
