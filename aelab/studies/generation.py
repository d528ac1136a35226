"""Generation: samples, interpolations, attribute vectors and traversals from a VAE and a plain AE.

The plain AE generates by decoding codes drawn from a Gaussian fitted to its training codes (the
contrast the VAE's prior is meant to remove). Sample quality is a number: the Fréchet distance to
the training images in the feature space of a small CNN the study trains on the same training
images (Heusel et al. 2017's FID, with our own classifier in place of Inception), reported for the
VAE, the AE-with-Gaussian and, as the floor, held-out real test images of the same count; plus the
classifier's confidence on samples and how many classes they cover. Attribute vectors (mean code of
class A minus class B; heavy minus light ink) are measured by how often B images plus the vector
are classified as A.

    aelab study generation data=fashion-mnist               # ~10-15 min on 2 idle CPU cores (estimate)
    aelab study generation data=fashion-mnist quick=true    # a few minutes
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy import linalg

from .. import stats
from ..config import TrainConfig
from ..convergence import qualify, vae_collapse
from ..engine import encode_all, fit
from ..errors import ConfigError
from ..models import build_model, get_model_class
from .base import (Cell, CellContext, Results, Study, StudyConfig, dataset_of, load_state_arrays, register_study,
                   seeds_of, state_arrays)
from .budget import ArmBudget, Curve, check_steps, kl_per_dim, model_probe, probe_rows, status_counts, train_cfg
from .generation_figures import attribute_vector, decode_images, draw_figures, figure_arrays
from .hashing_classifier import SmallCNN, apply_batched, images, train_classifier

ARMS = ("vae", "ae_gauss", "real_test")


@dataclass
class GenerationConfig(StudyConfig):
    latent_dim: int = 16
    # dense by default: an MLP epoch on Fashion-MNIST costs ~1/8 of a conv one on 2 CPU cores
    arch: Literal["conv", "dense"] = "dense"  # VAE architecture; the AE is `deep` or `conv` to match
    hidden: tuple[int, ...] = (512, 256)  # dense: MLP widths of both models
    channels: tuple[int, ...] = (32, 64)  # conv: one strided conv per entry (both models)
    beta: float = 1.0  # the VAE's KL weight
    n_samples: int = 0  # images per arm for the Fréchet distance (0 = the test set, up to 10,000)
    feat_dim: int = 128  # the classifier's penultimate layer: the Fréchet feature space
    # optimiser steps at train.batch_size: 10 and 3 passes over Fashion-MNIST's 60,000 training images
    # at batch 128 (the budgets before steps)
    vae_steps: int = 4680  # the VAE and the plain AE each
    cnn_steps: int = 1404  # the Fréchet instrument (a small CNN classifier)
    attribute: tuple[str, ...] = ()  # two class names "A","B": vector A - B; () = Sneaker - Ankle boot,
    #                                    else classes 1 - 0
    steps: int = 10  # interpolation frames
    traversal_range: float = 3.0  # traversal from -r to +r (prior std units for the VAE)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(progress="off"))

    def check(self) -> None:
        super().check()
        check_steps(vae_steps=self.vae_steps, cnn_steps=self.cnn_steps)
        if self.latent_dim <= 0 or self.feat_dim <= 0 or self.n_samples < 0:
            raise ConfigError("latent_dim and feat_dim must be > 0, n_samples >= 0")
        if self.attribute and len(self.attribute) != 2:
            raise ConfigError("attribute must name two classes, e.g. attribute=('Sneaker','Ankle boot')")
        if self.steps < 2 or self.traversal_range <= 0:
            raise ConfigError("steps must be >= 2 and traversal_range > 0")


def frechet(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians: |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))."""
    with warnings.catch_warnings():  # dead ReLU units make both covariances singular: harmless here
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as pytorch-fid does
        eps = 1e-6 * np.eye(len(cov1))
        covmean = linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1 + cov2 - 2 * covmean.real))


def moments(feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = feats.double().numpy()
    return f.mean(axis=0), np.cov(f, rowvar=False)


def build_arm(cfg: GenerationConfig, shape, kind: str):
    """The VAE (`kind` "vae") or the plain AE ("ae"), with the same latent size and architecture family."""
    if kind == "vae":
        vae_cfg = replace(get_model_class("vae").Config(name="vae"), latent_dim=cfg.latent_dim, arch=cfg.arch,
                          channels=cfg.channels, hidden=cfg.hidden, beta=cfg.beta)
        return build_model(vae_cfg, shape)
    ae_name = "conv" if cfg.arch == "conv" else "deep"
    ae_cfg = replace(get_model_class(ae_name).Config(name=ae_name), latent_dim=cfg.latent_dim)
    ae_cfg = replace(ae_cfg, **({"channels": cfg.channels} if cfg.arch == "conv" else {"hidden": cfg.hidden}))
    return build_model(ae_cfg, shape)


class GaussianCodes:
    """A full-covariance Gaussian fitted to codes (N, d); draws codes (n, d) for the AE to decode."""

    def __init__(self, codes: torch.Tensor):
        z = codes.double()
        self.mean = z.mean(0)
        cov = torch.cov(z.T) + 1e-6 * torch.eye(z.shape[1], dtype=z.dtype)
        self.chol = torch.linalg.cholesky(cov)
        self.std = z.std(0)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        eps = torch.randn(n, len(self.mean), generator=gen, dtype=torch.float64)
        return (self.mean + eps @ self.chol.T).float()


def pick_classes(cfg: GenerationConfig, classes: list[str]) -> tuple[int, int]:
    names = list(classes)
    wanted = cfg.attribute or (("Sneaker", "Ankle boot") if {"Sneaker", "Ankle boot"} <= set(names) else ())
    if not wanted:
        return 1, 0
    missing = [w for w in wanted if w not in names]
    if missing:
        raise ConfigError(f"attribute classes {missing} are not in the data set; choose from: {', '.join(names)}")
    return names.index(wanted[0]), names.index(wanted[1])


def run_seed(cfg: GenerationConfig, ds, splits, seed: int, ab: tuple[int, int], vae, ae, clf,
             figures: bool) -> dict:
    """Every measurement of one seed's trained VAE, AE and classifier (and, with `figures`, the images
    the figures show)."""
    tr, te, device = splits.train, splits.test, splits.train.device
    vae.eval(), ae.eval(), clf.eval()
    n = cfg.n_samples or min(len(te), 10_000)
    gen = torch.Generator().manual_seed(seed)
    gauss = GaussianCodes(encode_all(ae, tr))
    arms = {"vae": decode_images(vae, torch.randn(n, cfg.latent_dim, generator=gen), device),
            "ae_gauss": decode_images(ae, gauss.sample(n, gen), device),
            "real_test": images(te)[:n].cpu()}
    ref = moments(apply_batched(clf.features, images(tr)))
    res: dict = {}
    for arm, x in arms.items():
        probs = torch.softmax(apply_batched(clf.logits, x.to(device)), dim=1)  # (n, K)
        mean_p = probs.mean(0)
        res[f"fd.{arm}"] = frechet(*moments(apply_batched(clf.features, x.to(device))), *ref)
        res[f"confidence.{arm}"] = float(probs.max(1).values.mean())
        # exp(entropy of the mean prediction): 10 when samples spread evenly over 10 classes
        res[f"class_coverage.{arm}"] = float(torch.exp(-(mean_p * mean_p.clamp_min(1e-12).log()).sum()))
    res["classifier_test_acc"] = float((apply_batched(clf.logits, images(te)).argmax(1) == te.y.cpu()).float().mean())
    a, b = ab
    for name, model in (("vae", vae), ("ae", ae)):
        v = attribute_vector(model, tr, a, b)  # (d,)
        z_b = encode_all(model, te.subset(torch.nonzero(te.y == b).flatten()))
        moved = decode_images(model, z_b + v, device).to(device)
        res[f"attribute_transfer.{name}"] = float((apply_batched(clf.logits, moved).argmax(1) == a).float().mean())
    return res | (figure_arrays(cfg, vae, ae, gauss, tr, te, ab) if figures else {})


def build_instrument(cfg: GenerationConfig, shape, num_classes: int) -> SmallCNN:
    return SmallCNN(shape, num_classes, cfg.feat_dim)


@register_study("generation")
class GenerationStudy(Study):
    Config = GenerationConfig
    headline = "fd.vae"

    def preset(self, cfg: GenerationConfig) -> GenerationConfig:
        return replace(cfg, budget=cfg.budget * 0.3, n_samples=cfg.n_samples or 2000)

    def budgets(self, cfg: GenerationConfig) -> list[ArmBudget]:
        b, none = cfg.train.batch_size, "Kingma & Welling 2014 state none for this setting"
        arm = lambda part: model_probe(lambda shape: build_arm(cfg, shape, part),  # noqa: E731
                                       train_cfg(cfg.train, cfg.vae_steps, cfg.budget))
        cnn = model_probe(lambda shape: build_instrument(cfg, shape, 10), train_cfg(cfg.train, cfg.cnn_steps, cfg.budget),
                          labelled=True)
        return [ArmBudget("vae", cfg.vae_steps, b, None, none, probe=arm("vae")),
                ArmBudget("ae", cfg.vae_steps, b, None, "", probe=arm("ae")),
                ArmBudget("classifier", cfg.cnn_steps, b, None, "the instrument", probe=cnn),
                ArmBudget("measure", 0, 0, None, "no training")]

    def cells(self, cfg: GenerationConfig) -> list[Cell]:
        pick_classes(cfg, class_names(dataset_of(cfg)))  # before anything trains: a bad class name fails at once
        return [Cell(part, seed) for seed in seeds_of(cfg) for part in (*PARTS, "measure")]

    def needs(self, cfg: GenerationConfig, cell: Cell) -> list[Cell]:
        return [Cell(part, cell.seed) for part in PARTS] if cell.arm == "measure" else []

    def run_cell(self, cfg: GenerationConfig, cell: Cell, ctx: CellContext) -> dict:
        ds = ctx.dataset(cfg)
        splits = ctx.data(cfg, val_fraction=0.0)  # no validation rows, no hidden labels: one set for all seeds
        ncls = max(ds.num_classes, int(ds.y_train.max()) + 1)
        if cell.arm == "classifier":
            cnn, status = train_classifier(splits.train, ds.shape, ncls, cfg.train, cfg.cnn_steps, cell.seed,
                                           cfg.feat_dim, budget=cfg.budget)
            return state_arrays(cnn) | status
        if cell.arm in ("vae", "ae"):  # no validation split: the curve is the loss on a fixed training sample
            torch.manual_seed(cell.seed)
            model = build_arm(cfg, ds.shape, cell.arm)
            seen, curve = probe_rows(splits.train), Curve("val.loss")
            fit(model, splits.train, train_cfg(cfg.train, cfg.vae_steps, cfg.budget), val=seen, seed=cell.seed,
                on_eval=curve)
            collapse = vae_collapse(kl_per_dim(model, seen)) if cell.arm == "vae" else None
            return state_arrays(model) | curve.result(collapse)
        models = {part: load_state_arrays(build_arm(cfg, ds.shape, part) if part != "classifier" else
                                          build_instrument(cfg, ds.shape, ncls), ctx.deps[Cell(part, cell.seed).key])
                  .to(splits.train.device) for part in PARTS}
        ab = pick_classes(cfg, class_names(ds))
        res = run_seed(cfg, ds, splits, cell.seed, ab, models["vae"], models["ae"], models["classifier"],
                       figures=cell.seed == cfg.seed)
        return res | {"classes": class_names(ds), "n_samples": cfg.n_samples or min(len(splits.test), 10_000)}

    def summarize(self, cfg: GenerationConfig, results: Results, out: Path) -> dict:
        rows = results.where(arm="measure")
        keys = [k for k in rows.rows[0] if "." in k and not k.startswith("fig.") or k == "classifier_test_acc"]
        res: dict = {"status": status_counts(results)}
        for key in keys:  # "fd.vae" -> res["fd"]["vae"]
            group, _, arm = key.partition(".")
            if arm:
                res.setdefault(group, {})[arm] = stats.summary(rows.column(key))
            else:
                res[group] = stats.summary(rows.column(key))
        diff = stats.paired(rows.column("fd.vae"), rows.column("fd.ae_gauss"))
        res["vae_minus_ae_gauss_fd"] = diff
        res["verdict"] = qualify(f"VAE samples vs AE + fitted Gaussian, Fréchet distance (lower is better): "
                                 f"{stats.verdict(diff, higher_is_better=False)} ({diff['mean']:+.3g}, 95% CI "
                                 f"[{diff['ci95'][0]:+.3g}, {diff['ci95'][1]:+.3g}], {diff['n']} paired seeds); "
                                 f"real held-out floor {res['fd']['real_test']['mean']:.3g}",
                                 ("vae", "ae", "classifier"), res["status"])
        first = rows.one(seed=cfg.seed)
        names = list(first["classes"])
        a, b = pick_classes(cfg, names)
        res["setup"] = {"attribute": f"{names[a]} - {names[b]}", "latent_dim": cfg.latent_dim,
                        "n_samples": first["n_samples"], "feat_dim": cfg.feat_dim}
        draw_figures(cfg, first, res["setup"]["attribute"], out / "figures")
        return res


PARTS = ("vae", "ae", "classifier")  # trained in their own cells; the seed's "measure" cell reads all three


def class_names(ds) -> list[str]:
    return list(ds.classes) or [str(i) for i in range(int(ds.y_train.max()) + 1)]
