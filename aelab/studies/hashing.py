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

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import stats
from ..config import TrainConfig
from ..data import load_dataset
from ..data.device import DeviceData, pick_device, to_device
from ..engine import encode_all
from ..errors import ConfigError
from ..models import build_model
from ..models.hashing import SemHashConfig
from ..report import plots
from ..retrieval import evaluate_hash, nearest
from .base import StudyConfig, each_seed, note, register_study, train_seeds
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


def tune(train: DeviceData, shape, cfg: HashingConfig, epochs: int) -> dict:
    """(noise_std, hidden) with the best mAP: fit on part of the training set, query with the rest."""
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed)).to(train.device)
    n_q = max(1, int(cfg.tune_fraction * len(train)))
    fit_part, held = train.subset(perm[n_q:]), train.subset(perm[:n_q])
    scores = {}
    for hidden in cfg.tune_hidden:
        for noise in cfg.tune_noise:
            build = lambda: build_ae(shape, cfg, hidden, noise)  # noqa: E731
            model = train_seeds(cfg, build, fit_part, replace(cfg.train, epochs=epochs), [cfg.seed])[0]
            res = evaluate_hash(encode_all(model, held).numpy() > 0.5, held.y.cpu().numpy(),
                                encode_all(model, fit_part).numpy() > 0.5, fit_part.y.cpu().numpy(), cfg.k)
            scores[f"noise={noise} hidden={list(hidden)}"] = (res["map"], noise, tuple(hidden))
    best = max(scores.values())
    return {"noise_std": best[1], "hidden": list(best[2]), "val_map": {k: v[0] for k, v in scores.items()}}


def hashes(splits, shape, num_classes: int, cfg: HashingConfig, seed: int, ae):
    """{method: (train bits (N, bits), test bits (M, bits))} for one seed (its trained AE given), plus
    the AE's saturation."""
    tr, te = splits.train, splits.test
    z_te = encode_all(ae, te).numpy()
    out = {"ae": (encode_all(ae, tr).numpy() > 0.5, z_te > 0.5)}
    x_tr, x_te = flat(tr), flat(te)
    itq = ITQ(cfg.bits, seed=seed).fit(x_tr)
    out["itq"] = (itq.transform(x_tr), itq.transform(x_te))
    lsh = LSH(cfg.bits, seed=seed).fit(x_tr)
    out["lsh"] = (lsh.transform(x_tr), lsh.transform(x_te))
    cnn = train_classifier(tr, shape, num_classes, cfg.train, cfg.cnn_epochs, seed, cfg.bits, "sigmoid")
    out["cnn"] = tuple(apply_batched(cnn.features, images(d)).numpy() > 0.5 for d in (tr, te))
    # fraction of test code units within 0.1 of 0 or 1: how cleanly the noise made them bits
    saturation = float((np.minimum(z_te, 1 - z_te) < 0.1).mean())
    return out, saturation


def neighbours_page(codes: dict, x_tr: torch.Tensor, x_te: torch.Tensor, cfg: HashingConfig, figs: Path) -> None:
    """Per method: each row a test query, then its nearest index images by Hamming distance."""
    q = min(cfg.show_queries, len(x_te))
    for m, (tr_bits, te_bits) in codes.items():
        idx = nearest(te_bits[:q], tr_bits, cfg.neighbours)  # (q, n)
        rows = [torch.cat([x_te[i:i + 1], x_tr[torch.as_tensor(idx[i])]]) for i in range(q)]
        grid = torch.cat(rows).cpu().numpy()
        title = f"{m}: query, then its {idx.shape[1]} nearest training images ({cfg.bits} bits)"
        plots.save(plots.image_grid(grid, nrow=idx.shape[1] + 1, title=title), figs / f"neighbours_{m}.png")


@register_study("hashing")
class HashingStudy:
    Config = HashingConfig

    def run(self, cfg: HashingConfig, out: Path) -> dict:
        if cfg.quick:
            cfg.train = replace(cfg.train, epochs=min(cfg.train.epochs, 3))
            cfg.cnn_epochs = 1
        ds = load_dataset(cfg.data.name, cfg.data.data_dir or None, cfg.data.download)
        device = pick_device(cfg.train.device)
        shape, ncls = ds.shape, max(ds.num_classes, int(ds.y_train.max()) + 1)
        base = to_device(ds, device, 0.0, cfg.seed)  # index = the whole training set
        noise, hidden, tuned = cfg.noise_std, cfg.hidden, None
        if cfg.tune:
            tuned = tune(base.train, shape, cfg, max(1, cfg.train.epochs // 3))
            noise, hidden = tuned["noise_std"], tuned["hidden"]
        per: dict[str, dict[str, list[float]]] = {m: {} for m in METHODS}
        saturation, seconds = [], []
        seeds = [cfg.seed + i for i in range(cfg.seeds)]
        aes = train_seeds(cfg, lambda: build_ae(shape, cfg, hidden, noise), base.train, cfg.train, seeds)
        note(f"hashing: the AEs of {len(seeds)} seed(s) trained")
        for i, seed in each_seed(cfg, "hashing"):
            codes, sat = hashes(base, shape, ncls, cfg, seed, aes[i])
            saturation.append(sat)
            y_tr, y_te = base.train.y.cpu().numpy(), base.test.y.cpu().numpy()
            for m, (tr_bits, te_bits) in codes.items():
                t0 = time.perf_counter()
                res = evaluate_hash(te_bits, y_te, tr_bits, y_tr, cfg.k, cfg.radius)
                seconds.append(time.perf_counter() - t0)
                for key, v in res.items():
                    per[m].setdefault(key, []).append(v)
            if i == 0:
                neighbours_page(codes, images(base.train), images(base.test), cfg, out / "figures")
        return self.metrics(cfg, per, saturation, seconds, noise, hidden, tuned)

    def metrics(self, cfg, per, saturation, seconds, noise, hidden, tuned) -> dict:
        res: dict = {m: {k: stats.summary(v) for k, v in vals.items()} for m, vals in per.items()}
        diff = stats.paired(per["ae"]["map"], per["itq"]["map"])
        word = stats.verdict(diff, higher_is_better=True)
        res["ae_minus_itq_map"] = diff
        res["verdict"] = (f"AE hash vs PCA-ITQ mAP at {cfg.bits} bits: {word} "
                          f"({diff['mean']:+.4f}, 95% CI [{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}], "
                          f"{diff['n']} paired seeds)")
        res["ae_code_saturation"] = stats.summary(saturation)
        res["setup"] = {"bits": cfg.bits, "noise_std": noise, "hidden": list(hidden), "k": cfg.k,
                        "radius": cfg.radius, "tuned": tuned,
                        "retrieval_seconds_per_method": float(np.mean(seconds)),
                        "ties": "expected AP and precision@k under a uniformly random order of equal distances"}
        return res
