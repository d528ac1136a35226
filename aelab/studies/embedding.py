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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import stats
from ..config import TrainConfig
from ..convergence import qualify
from ..engine import encode_all, evaluate, fit
from ..errors import ConfigError
from ..models import build_model
from ..models.base import Autoencoder
from ..report import plots
from .base import Cell, CellContext, Results, Study, StudyConfig, register_study, seeds_of
from .budget import ArmBudget, Curve, check_steps, model_probe, status_counts, train_cfg


@dataclass
class EmbeddingConfig(StudyConfig):
    model: str = "deep"  # the AE whose codes are mapped to 2-D (an MLP: fast on CPUs)
    latent_dim: int = 32  # its code size; the 2-D route uses the same model with latent_dim=2
    points: int = 3000  # held-out test points mapped to 2-D per seed (t-SNE is O(n log n) and slow)
    perplexity: float = 30.0
    linear_dim: int = 16  # components of the linear-AE vs PCA check
    # optimiser steps at train.batch_size: 15 and 30 passes over Fashion-MNIST's 54,000 training images
    # at batch 128 (the budgets before steps); the linear AE needs more than the others to reach PCA
    steps: int = 6315
    linear_steps: int = 12630
    thumbnails: int = 12  # images drawn on each scatter plot
    train: TrainConfig = field(default_factory=lambda: TrainConfig(progress="off"))

    def check(self) -> None:
        super().check()
        check_steps(steps=self.steps, linear_steps=self.linear_steps)
        if self.points < 20 or self.latent_dim <= 0 or self.linear_dim <= 0:
            raise ConfigError("points must be >= 20; latent_dim, linear_dim > 0")
        if not 5 <= self.perplexity < self.points / 3:
            raise ConfigError("perplexity must be in [5, points / 3)")


def knn_accuracy(points: np.ndarray, labels: np.ndarray, k: int, folds: int = 5) -> float:
    """Mean k-NN accuracy over `folds`-fold cross-validation within (N, 2) `points`."""
    from sklearn.model_selection import cross_val_score  # scikit-learn where a cell needs it: the
    from sklearn.neighbors import KNeighborsClassifier  # workers of other studies never import it

    return float(cross_val_score(KNeighborsClassifier(n_neighbors=k), points, labels, cv=folds).mean())


def score_2d(emb: np.ndarray, pixels: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The three held-out metrics of one 2-D map `emb` (N, 2) of images `pixels` (N, D)."""
    from sklearn.manifold import trustworthiness

    return {"knn1": knn_accuracy(emb, labels, 1), "knn5": knn_accuracy(emb, labels, 5),
            "trust": float(trustworthiness(pixels, emb, n_neighbors=5))}


def ae(name: str, latent: int, shape) -> Autoencoder:
    model_cfg = build_model(name, shape).cfg
    model_cfg.latent_dim = latent
    return build_model(model_cfg, shape)


def train_ae(cfg: EmbeddingConfig, name: str, latent: int, splits, shape, seed: int, steps: int,
             status: dict) -> Autoencoder:
    """The AE trained `steps` (times the budget); its curve and status (validation loss) go into `status`."""
    torch.manual_seed(seed)
    model = ae(name, latent, shape)
    curve = Curve("val.loss")
    fit(model, splits.train, train_cfg(cfg.train, steps, cfg.budget), val=splits.val, seed=seed, on_eval=curve)
    status.update(curve.result())
    return model


def linear_vs_pca(cfg: EmbeddingConfig, splits, seed: int) -> dict[str, float]:
    """Test MSE per pixel of a linear AE and of PCA, both with `linear_dim` components (seed 002)."""
    from sklearn.decomposition import PCA

    status: dict = {}
    model = train_ae(cfg, "linear", cfg.linear_dim, splits, tuple(splits.train.x.shape[1:]), seed,
                     cfg.linear_steps, status)
    ae_mse = evaluate(model, splits.test)["mse"]
    flat = lambda d: d.x.flatten(1).float().div(255).cpu().numpy()  # noqa: E731  (N, D)
    pca = PCA(cfg.linear_dim, random_state=seed).fit(flat(splits.train))
    xt = flat(splits.test)
    pca_mse = float(np.mean((pca.inverse_transform(pca.transform(xt)) - xt) ** 2))
    return {"linear_ae": ae_mse, "pca": pca_mse, "ratio": ae_mse / pca_mse, **status}


ROUTES = {"pixels": ("pca_pixels", "tsne_pixels"), "ae": ("ae_tsne", "ae_umap"), "ae_2d": ("ae_2d",)}  # by cell
GROUP = {r: g for g, routes in ROUTES.items() for r in routes}


def held_out_points(cfg: EmbeddingConfig, splits, seed: int):
    """The seeded held-out subsample every route maps: (its DeviceData, pixels (n, D), labels (n,))."""
    n = len(splits.test)
    sub = np.sort(np.random.default_rng(seed).permutation(n)[:min(cfg.points, n)])
    test = splits.test.subset(sub)
    return test, test.x.flatten(1).float().div(255).cpu().numpy(), test.y.cpu().numpy()


def route_maps(cfg: EmbeddingConfig, group: str, splits, test, pixels: np.ndarray, seed: int,
               status: dict) -> dict[str, np.ndarray]:
    """The 2-D maps (n, 2) of one group of routes: on pixels, from the AE's codes, or the 2-D-code AE
    (whose curve and status go into `status`)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    tsne = lambda x: TSNE(2, perplexity=cfg.perplexity, init="pca", random_state=seed).fit_transform(x)  # noqa: E731
    shape = tuple(splits.train.x.shape[1:])
    if group == "pixels":
        train_px = splits.train.x.flatten(1).float().div(255).cpu().numpy()
        return {"pca_pixels": PCA(2, random_state=seed).fit(train_px).transform(pixels),
                "tsne_pixels": tsne(PCA(min(50, pixels.shape[1]), random_state=seed).fit_transform(pixels))}
    if group == "ae_2d":
        return {"ae_2d": encode_all(train_ae(cfg, cfg.model, 2, splits, shape, seed, cfg.steps, status), test).numpy()}
    codes = encode_all(train_ae(cfg, cfg.model, cfg.latent_dim, splits, shape, seed, cfg.steps, status), test).numpy()
    maps = {"ae_tsne": tsne(codes)}
    if importlib.util.find_spec("umap") is not None:  # optional: pip install 'aelab[umap]'
        import umap
        maps["ae_umap"] = umap.UMAP(random_state=seed).fit_transform(codes)
    return maps


@register_study("embedding")
class EmbeddingStudy(Study):
    Config = EmbeddingConfig

    def preset(self, cfg: EmbeddingConfig) -> EmbeddingConfig:  # fewer points, a third of the steps
        return replace(cfg, points=min(cfg.points, 1000), budget=cfg.budget / 3)

    def budgets(self, cfg: EmbeddingConfig) -> list[ArmBudget]:
        b, none = cfg.train.batch_size, "seed 002 states none"
        mk = lambda latent, name, steps: model_probe(lambda shape: ae(name, latent, shape),  # noqa: E731
                                                     train_cfg(cfg.train, steps, cfg.budget))
        return [ArmBudget("ae", cfg.steps, b, None, none, probe=mk(cfg.latent_dim, cfg.model, cfg.steps)),
                ArmBudget("ae_2d", cfg.steps, b, None, none, probe=mk(2, cfg.model, cfg.steps)),
                ArmBudget("linear", cfg.linear_steps, b, None, none,
                          probe=mk(cfg.linear_dim, "linear", cfg.linear_steps)),
                ArmBudget("pixels", 0, 0, None, "no training")]

    def cells(self, cfg: EmbeddingConfig) -> list[Cell]:
        return [Cell(group, seed) for seed in seeds_of(cfg) for group in (*ROUTES, "linear")]

    def run_cell(self, cfg: EmbeddingConfig, cell: Cell, ctx: CellContext) -> dict:
        splits = ctx.data(cfg, seed=cell.seed)
        if cell.arm == "linear":
            return linear_vs_pca(cfg, splits, cell.seed)
        test, pixels, labels = held_out_points(cfg, splits, cell.seed)
        status: dict = {}
        maps = route_maps(cfg, cell.arm, splits, test, pixels, cell.seed, status)
        out: dict = {"scores": {route: score_2d(m, pixels, labels) for route, m in maps.items()}, **status}
        if cell.seed == cfg.seed:  # the figures: the first seed's maps, labels and thumbnail images
            out |= {f"map.{route}": m for route, m in maps.items()}
            if cell.arm == "pixels":
                thumbs = np.random.default_rng(cfg.seed).choice(len(labels), min(cfg.thumbnails, len(labels)), replace=False)
                out |= {"labels": labels, "thumb_rows": thumbs, "thumbs": test.x[torch.as_tensor(thumbs)].cpu().numpy(),
                        "classes": list(ctx.dataset(cfg).classes)}
        return out

    def summarize(self, cfg: EmbeddingConfig, results: Results, out: Path) -> dict:
        """Per route and metric, a summary over seeds; the best AE route; the bar's verdicts; the figures."""
        done = [r for g in ROUTES for r in ROUTES[g] if r in results.one(arm=g, seed=cfg.seed)["scores"]]
        col = lambda r, m: [row["scores"][r][m] for row in sorted(results.where(arm=GROUP[r]), key=lambda x: x["seed"])]  # noqa: E731
        px = results.one(arm="pixels", seed=cfg.seed)
        res: dict = {"points": len(px["labels"]), "knn_protocol": "5-fold CV within the held-out test subsample",
                     "trust_reference": "pixels, 5 neighbours", "status": status_counts(results)}
        res |= {r: {m: stats.summary(col(r, m)) for m in ("knn1", "knn5", "trust")} for r in done}
        res["linear_vs_pca"] = {m: stats.summary(results.column(m, arm="linear")) for m in ("linear_ae", "pca", "ratio")}
        best = max((r for r in done if r in ROUTES["ae"]), key=lambda r: res[r]["knn5"]["mean"])
        k5, tr = res[best]["knn5"]["mean"], res[best]["trust"]["mean"]
        res["best_ae_route"] = best
        res["bar"] = qualify(f"{best}: 2-D 5-NN {k5:.3f} (bar 0.80), trustworthiness {tr:.3f} (bar 0.98): "
                             f"{'met' if k5 >= 0.80 and tr >= 0.98 else 'not met'}", [GROUP[best]], res["status"])
        for r in ("tsne_pixels", "ae_2d"):
            diff = stats.paired(col(best, "knn5"), col(r, "knn5"))
            res[f"{best}_vs_{r}_knn5"] = {"diff": diff, "verdict": qualify(
                f"{best} is {stats.verdict(diff)} than {r} (5-NN)", [GROUP[best], GROUP[r]], res["status"])}
        for r in done:  # the first seed's maps, with a few test images drawn where they landed
            emb = results.one(arm=GROUP[r], seed=cfg.seed)[f"map.{r}"]
            fig = plots.scatter_2d(emb, px["labels"], f"{r} ({len(emb)} test points, seed {cfg.seed})", px["classes"] or None)
            plots.save(plots.add_thumbnails(fig, emb[px["thumb_rows"]], px["thumbs"].astype(np.float32) / 255),
                       out / "figures" / f"scatter_{r}.png")
        return res
