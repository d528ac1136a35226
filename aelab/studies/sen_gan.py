"""The SEN study's GAN batch-size check: the GAN (AE + GAN rounds, undirected) trained at each batch size on
the same images, its samples scored by the Frechet distance to test images in a 20-component PCA of pixel
space (lower is better); the seed found batch size 4 best on MNIST.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from .. import stats
from ..data.device import DeviceData
from ..engine import fit
from ..models import build_model
from ..report import plots
from .base import Results


def subsample(data: DeviceData, n: int, seed: int) -> DeviceData:
    if not n or n >= len(data):
        return data
    g = torch.Generator().manual_seed(seed)
    return data.subset(torch.randperm(len(data), generator=g)[:n].sort().values)


def frechet_pca(a: np.ndarray, b: np.ndarray, comps: int = 20) -> float:
    """Frechet distance between Gaussians fitted to a and b (N, D) in b's top-`comps` PCA space."""
    mu = b.mean(0)
    _, _, vt = np.linalg.svd(b - mu, full_matrices=False)
    pa, pb = (a - mu) @ vt[:comps].T, (b - mu) @ vt[:comps].T
    ca, cb = np.cov(pa, rowvar=False), np.cov(pb, rowvar=False)
    root = linalg.sqrtm(ca @ cb).real
    return float(((pa.mean(0) - pb.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * root))


def gan_frechet(cfg, train: DeviceData, test: DeviceData, k: int, bs: int, seed: int) -> float:
    """Train the GAN (AE + GAN rounds, undirected) at batch size `bs` on `bs_images` images; the PCA-Frechet
    distance of its samples to 1,000 test images."""
    sub = subsample(train, cfg.bs_images, cfg.seed)
    real = test.batch(slice(0, 1000))["x"].float().cpu().numpy().reshape(min(1000, len(test)), -1)
    torch.manual_seed(seed)
    m = build_model(dataclasses.replace(cfg.model, clf_round=False, directed=False), train.x.shape[1:], k)
    fit(m, sub, dataclasses.replace(cfg.train, epochs=1, batch_size=bs, progress="off"), seed=seed)
    m.eval()
    with torch.no_grad():
        fake = torch.sigmoid(m.generate(len(real))).float().cpu().numpy().reshape(len(real), -1)
    return frechet_pca(fake, real)


def batch_size_summary(results: Results, cfg, out: Path) -> dict:
    fd = {bs: results.column("fd", arm="gan-batch-size", n=bs) for bs in cfg.batch_sizes}
    res = {f"fd@{bs}": stats.summary(v) for bs, v in fd.items()}
    best = min(fd, key=lambda b: np.mean(fd[b]))
    small, large = min(cfg.batch_sizes), max(cfg.batch_sizes)
    if small != large:
        d = stats.paired(fd[small], fd[large])
        res[f"fd@{small} - fd@{large}"] = d
        res["verdict"] = (f"lowest mean Frechet distance at batch size {best}; batch size {small} vs {large}: "
                          f"{stats.verdict(d, higher_is_better=False)}")
    x = list(cfg.batch_sizes)
    plots.save(plots.metric_vs(x, {"PCA-Frechet": (np.array([np.mean(fd[b]) for b in x]),
                                                   np.array([np.std(fd[b]) for b in x]))},
                               "batch size", "Frechet distance (lower is better)",
                               f"GAN samples vs batch size ({cfg.bs_images} images each)", logx=True),
               out / "figures" / "batch_size.png")
    return res
