"""embedding: AE codes -> 2-D (t-SNE, UMAP) vs PCA, t-SNE on pixels and a 2-D-code AE; linear AE = PCA.

Every route maps the same held-out test points (a seeded subsample of `points` images: t-SNE cost
grows with n, so not all 10k) to 2-D. Metrics, per route, mean ± CI over seeds:
  knn1 / knn5  k-NN accuracy in 2-D by 5-fold cross-validation *within* the subsample (t-SNE and
               UMAP have no transform for unseen points, so every route is scored the same way)
  trust        scikit-learn trustworthiness of the 2-D map against the pixels (5 neighbours)
Also seed 002's check: test MSE of a linear AE vs PCA with the same number of components.

    aelab study embedding data=fashion-mnist            # ~15-20 min on 2 CPU cores (estimate)
    aelab study embedding data=digits quick=true        # seconds
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE, trustworthiness
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from .. import stats
from ..classify import with_min_steps
from ..config import TrainConfig
from ..data import load_dataset
from ..data.device import pick_device, to_device
from ..engine import encode_all, evaluate, fit
from ..errors import ConfigError
from ..models import build_model
from ..models.base import Autoencoder
from ..report import plots
from .base import StudyConfig, each_seed, register_study


@dataclass
class EmbeddingConfig(StudyConfig):
    model: str = "deep"  # the AE whose codes are mapped to 2-D (an MLP: fast on CPUs)
    latent_dim: int = 32  # its code size; the 2-D route uses the same model with latent_dim=2
    points: int = 3000  # held-out test points mapped to 2-D per seed (t-SNE is O(n log n) and slow)
    perplexity: float = 30.0
    linear_dim: int = 16  # components of the linear-AE vs PCA check
    linear_epochs: int = 30  # the linear AE needs more epochs than the others to reach PCA
    min_steps: int = 2000  # ... and every AE at least this many steps (small sets: more epochs)
    thumbnails: int = 12  # images drawn on each scatter plot
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=15, progress="off"))

    def check(self) -> None:
        super().check()
        if self.points < 20 or self.latent_dim <= 0 or self.linear_dim <= 0 or self.linear_epochs <= 0:
            raise ConfigError("points must be >= 20; latent_dim, linear_dim, linear_epochs > 0")
        if not 5 <= self.perplexity < self.points / 3:
            raise ConfigError("perplexity must be in [5, points / 3)")


def knn_accuracy(points: np.ndarray, labels: np.ndarray, k: int, folds: int = 5) -> float:
    """Mean k-NN accuracy over `folds`-fold cross-validation within (N, 2) `points`."""
    return float(cross_val_score(KNeighborsClassifier(n_neighbors=k), points, labels, cv=folds).mean())


def score_2d(emb: np.ndarray, pixels: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The three held-out metrics of one 2-D map `emb` (N, 2) of images `pixels` (N, D)."""
    return {"knn1": knn_accuracy(emb, labels, 1), "knn5": knn_accuracy(emb, labels, 5),
            "trust": float(trustworthiness(pixels, emb, n_neighbors=5))}


def train_ae(cfg: EmbeddingConfig, name: str, latent: int, train, shape, seed: int, epochs: int) -> Autoencoder:
    torch.manual_seed(seed)
    model_cfg = build_model(name, shape).cfg
    model_cfg.latent_dim = latent
    model = build_model(model_cfg, shape)
    fit(model, train, with_min_steps(TrainConfig(**{**vars(cfg.train), "epochs": epochs}), len(train),
                                     cfg.min_steps), seed=seed)
    return model


def linear_vs_pca(cfg: EmbeddingConfig, splits, seed: int) -> dict[str, float]:
    """Test MSE per pixel of a linear AE and of PCA, both with `linear_dim` components (seed 002)."""
    model = train_ae(cfg, "linear", cfg.linear_dim, splits.train, tuple(splits.train.x.shape[1:]), seed,
                     cfg.linear_epochs)
    ae_mse = evaluate(model, splits.test)["mse"]
    flat = lambda d: d.x.flatten(1).float().div(255).cpu().numpy()  # noqa: E731  (N, D)
    pca = PCA(cfg.linear_dim, random_state=seed).fit(flat(splits.train))
    xt = flat(splits.test)
    pca_mse = float(np.mean((pca.inverse_transform(pca.transform(xt)) - xt) ** 2))
    return {"linear_ae": ae_mse, "pca": pca_mse, "ratio": ae_mse / pca_mse}


def one_seed(cfg: EmbeddingConfig, ds, seed: int) -> tuple[dict, dict, np.ndarray, np.ndarray, np.ndarray]:
    """All routes for one seed: their scores, their 2-D maps, and the subsample's images and labels."""
    splits = to_device(ds, pick_device(cfg.train.device), cfg.data.val_fraction, seed)
    shape = ds.shape
    sub = np.sort(np.random.default_rng(seed).permutation(len(ds.y_test))[:cfg.points])
    test = splits.test.subset(sub)
    pixels = test.x.flatten(1).float().div(255).cpu().numpy()  # (n, D)
    labels = ds.y_test[sub]
    ae = train_ae(cfg, cfg.model, cfg.latent_dim, splits.train, shape, seed, cfg.train.epochs)
    ae2 = train_ae(cfg, cfg.model, 2, splits.train, shape, seed, cfg.train.epochs)
    codes = encode_all(ae, test).numpy()
    tsne = lambda x: TSNE(2, perplexity=cfg.perplexity, init="pca", random_state=seed).fit_transform(x)  # noqa: E731
    maps = {
        "pca_pixels": PCA(2, random_state=seed).fit(splits.train.x.flatten(1).float().div(255).cpu().numpy())
        .transform(pixels),
        "tsne_pixels": tsne(PCA(min(50, pixels.shape[1]), random_state=seed).fit_transform(pixels)),
        "ae_tsne": tsne(codes),
        "ae_2d": encode_all(ae2, test).numpy(),
    }
    if importlib.util.find_spec("umap") is not None:  # optional: pip install 'aelab[umap]'
        import umap
        maps["ae_umap"] = umap.UMAP(random_state=seed).fit_transform(codes)
    scores = {route: score_2d(m, pixels, labels) for route, m in maps.items()}
    scores["linear_vs_pca"] = linear_vs_pca(cfg, splits, seed)
    return scores, maps, test.x.float().div(255).cpu().numpy(), labels, ds.classes


def with_thumbnails(fig, emb: np.ndarray, images: np.ndarray, n: int, seed: int):
    """Draw `n` of the (N, C, H, W) `images` at their 2-D positions on the scatter's axes."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    ax = fig.axes[0]
    zoom = 16 / images.shape[-1] if images.shape[-1] < 16 else 0.6
    for i in np.random.default_rng(seed).choice(len(emb), min(n, len(emb)), replace=False):
        img = images[i].transpose(1, 2, 0).squeeze()
        box = OffsetImage(img, cmap="gray_r" if img.ndim == 2 else None, zoom=zoom)
        ax.add_artist(AnnotationBbox(box, emb[i], frameon=True, pad=0.1))
    return fig


@register_study("embedding")
class EmbeddingStudy:
    Config = EmbeddingConfig

    def run(self, cfg: EmbeddingConfig, out: Path) -> dict:
        if cfg.quick:  # the smaller preset: fewer points and epochs
            cfg.points, cfg.train.epochs, cfg.linear_epochs = min(cfg.points, 1000), min(cfg.train.epochs, 5), 15
            cfg.min_steps = min(cfg.min_steps, 500)
        ds = load_dataset(cfg.data.name, cfg.data.data_dir or None, cfg.data.download)
        cfg.points = min(cfg.points, len(ds.y_test))
        per_seed = []
        for i, seed in each_seed(cfg, "embedding"):
            scores, maps, images, labels, classes = one_seed(cfg, ds, seed)
            per_seed.append(scores)
            if i == 0:
                for route, emb in maps.items():
                    fig = plots.scatter_2d(emb, labels, f"{route} ({len(emb)} test points, seed {cfg.seed})",
                                           classes or None)
                    plots.save(with_thumbnails(fig, emb, images, cfg.thumbnails, cfg.seed),
                               out / "figures" / f"scatter_{route}.png")
        return summarise(per_seed, cfg)


def summarise(per_seed: list[dict], cfg: EmbeddingConfig) -> dict:
    """Per route and metric, a summary over seeds; the best AE route; the bar's verdicts."""
    routes = [r for r in per_seed[0] if r != "linear_vs_pca"]
    out: dict = {"points": cfg.points, "knn_protocol": "5-fold CV within the held-out test subsample",
                 "trust_reference": "pixels, 5 neighbours"}
    for r in routes:
        out[r] = {m: stats.summary([s[r][m] for s in per_seed]) for m in ("knn1", "knn5", "trust")}
    out["linear_vs_pca"] = {m: stats.summary([s["linear_vs_pca"][m] for s in per_seed])
                            for m in ("linear_ae", "pca", "ratio")}
    ae_routes = [r for r in routes if r.startswith("ae_") and r != "ae_2d"]
    best = max(ae_routes, key=lambda r: out[r]["knn5"]["mean"])
    out["best_ae_route"] = best
    k5, tr = out[best]["knn5"]["mean"], out[best]["trust"]["mean"]
    met = "met" if k5 >= 0.80 and tr >= 0.98 else "not met"
    out["bar"] = f"{best}: 2-D 5-NN {k5:.3f} (bar 0.80), trustworthiness {tr:.3f} (bar 0.98): {met}"
    for r in ("tsne_pixels", "ae_2d"):
        diff = stats.paired([s[best]["knn5"] for s in per_seed], [s[r]["knn5"] for s in per_seed])
        out[f"{best}_vs_{r}_knn5"] = {"diff": diff, "verdict": f"{best} is {stats.verdict(diff)} than {r} (5-NN)"}
    return out
