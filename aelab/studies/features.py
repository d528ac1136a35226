"""features: what the units learned (seed 004 Q6): first-layer weights, top-activating images, sparsity.

For each model (dense, deep, sparse, tied, conv by default): its first layer's weights as image tiles
(conv: its 3x3 filters), and for each of the first `units` code units the 9 test images that drive it
highest; the sparse AE beside the dense one shows what the sparsity penalty does. Metrics, mean ± CI
over seeds: the fraction of near-zero code activations (|z| < `zero_tol` x the largest |z| of that
model's test codes) and the test reconstruction error of each model.

    aelab study features data=fashion-mnist             # ~10-15 min on 2 CPU cores (estimate)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import stats
from ..config import TrainConfig
from ..convergence import qualify
from ..engine import encode_all, evaluate, fit
from ..errors import ConfigError
from ..models import build_model, model_names
from ..report import plots
from .base import Cell, CellContext, Results, Study, StudyConfig, register_study, seeds_of
from .budget import ArmBudget, Curve, check_steps, model_probe, status_counts, train_cfg


@dataclass
class FeaturesConfig(StudyConfig):
    models: tuple[str, ...] = ("dense", "deep", "sparse", "tied", "conv")
    units: int = 16  # code units shown in the top-activating figures
    top: int = 9  # images per unit
    # optimiser steps of every model at train.batch_size: 5 passes over Fashion-MNIST's 54,000 training
    # images at batch 128 (the budget before steps); a small set gets the same updates in more passes
    steps: int = 2105
    zero_tol: float = 0.01  # "near zero": |z| below this fraction of the model's largest |z|
    train: TrainConfig = field(default_factory=lambda: TrainConfig(progress="off"))

    def check(self) -> None:
        super().check()
        check_steps(steps=self.steps)
        unknown = [m for m in self.models if m not in model_names()]
        if not self.models or unknown:
            raise ConfigError(f"models must name registered models; unknown: {unknown or 'none given'}")
        if self.units <= 0 or self.top <= 0 or not 0 <= self.zero_tol < 1:
            raise ConfigError("units and top must be > 0 and zero_tol in [0, 1)")


def first_layer_tiles(model: nn.Module, shape: tuple[int, int, int]) -> np.ndarray:
    """The first layer's weights as images: (units, C, H, W) for a dense layer on the pixels,
    (filters, C, k, k) for a conv layer; ValueError when the first weight layer is neither."""
    n = int(np.prod(shape))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.weight.detach().float().cpu().numpy()
        if isinstance(m, nn.Linear):
            if m.in_features != n:
                break
            return m.weight.detach().float().cpu().numpy().reshape(-1, *shape)
    raise ValueError(f"{type(model).__name__}: its first weight layer does not read the pixels")


def top_activating(codes: np.ndarray, k: int) -> np.ndarray:
    """(N, D) codes -> (D, k) row indices of the k images with the highest activation of each unit."""
    return np.argsort(-codes, axis=0, kind="stable")[:k].T


def near_zero_fraction(codes: np.ndarray, tol: float) -> float:
    """Fraction of entries of (N, D) `codes` with |z| < tol * max |z| (scale-free across models)."""
    a = np.abs(codes)
    return float((a < tol * a.max()).mean()) if a.max() > 0 else 1.0


def measure(cfg: FeaturesConfig, name: str, splits, seed: int, figures: bool) -> dict:
    """Train one model; its code's near-zero share and test BCE (and the first seed's figure images)."""
    shape = tuple(splits.train.x.shape[1:])
    torch.manual_seed(seed)
    model = build_model(name, shape)
    curve = Curve("val.loss")  # the training objective on the validation split
    fit(model, splits.train, train_cfg(cfg.train, cfg.steps, cfg.budget), val=splits.val, seed=seed, on_eval=curve)
    codes = encode_all(model, splits.test).numpy()  # (N_test, D)
    out = {**curve.result(), "near_zero": near_zero_fraction(codes, cfg.zero_tol), "test_bce": evaluate(model, splits.test)["bce"],
           "code_dim": codes.shape[1]}
    if figures:  # weight tiles, and the test images (uint8) that drive the most variable live units highest
        alive = np.flatnonzero(codes.max(0) > codes.min(0))  # dead units show nothing
        units = alive[np.argsort(-codes[:, alive].var(0))][:cfg.units]
        idx = top_activating(codes[:, units], cfg.top)  # (U, top)
        out |= {"tiles": first_layer_tiles(model, shape)[:64], "top_images": splits.test.x[torch.as_tensor(idx.ravel())]}
    return out


@register_study("features")
class FeaturesStudy(Study):
    Config = FeaturesConfig
    headline = "near_zero"

    def preset(self, cfg: FeaturesConfig) -> FeaturesConfig:
        return replace(cfg, budget=cfg.budget * 0.15)  # ~300 steps

    def cells(self, cfg: FeaturesConfig) -> list[Cell]:
        return [Cell(name, seed) for seed in seeds_of(cfg) for name in cfg.models]

    def budgets(self, cfg: FeaturesConfig) -> list[ArmBudget]:
        tcfg = train_cfg(cfg.train, cfg.steps, cfg.budget)
        return [ArmBudget(m, cfg.steps, cfg.train.batch_size, None, "seed 004 states none",
                          probe=model_probe(lambda shape, m=m: build_model(m, shape), tcfg)) for m in cfg.models]

    def run_cell(self, cfg: FeaturesConfig, cell: Cell, ctx: CellContext) -> dict:
        return measure(cfg, cell.arm, ctx.data(cfg, seed=cell.seed), cell.seed, figures=cell.seed == cfg.seed)

    def summarize(self, cfg: FeaturesConfig, results: Results, out: Path) -> dict:
        result: dict = {"zero_tol": cfg.zero_tol, "status": status_counts(results)}
        for name in cfg.models:
            result[name] = {m: stats.summary(results.column(m, arm=name)) for m in ("near_zero", "test_bce")}
            result[name]["code_dim"] = results.column("code_dim", arm=name)[0]
            first = results.one(arm=name, seed=cfg.seed)
            plots.save(plots.image_grid(first["tiles"], nrow=8, title=f"{name}: first-layer weights", normalize=True),
                       out / "figures" / f"weights_{name}.png")
            plots.save(plots.image_grid(first["top_images"] / 255, nrow=cfg.top,
                                        title=f"{name}: top-{cfg.top} test images per code unit (one row each)"),
                       out / "figures" / f"top_{name}.png")
        if "sparse" in cfg.models and "dense" in cfg.models:  # what sparsity does to the code (paired by seed)
            diff = stats.paired(results.column("near_zero", arm="sparse"), results.column("near_zero", arm="dense"))
            result["sparse_vs_dense_near_zero"] = {
                "diff": diff, "verdict": qualify(f"sparse has {_more(stats.verdict(diff))} near-zero codes than dense",
                                  ("sparse", "dense"), result["status"])}
        return result


def _more(verdict: str) -> str:
    return {"better": "more", "worse": "fewer"}.get(verdict, "no measurably different share of")
