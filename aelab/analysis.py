"""What a finished autoencoder run is measured by, and the arrays its figures are drawn from.

Metrics: reconstruction error on the training and test images (MSE per pixel, BCE per image),
their gap (seed 004 Q3), and each model's own terms (a VAE's negative ELBO and KL; the IWAE bound
with `eval.iw_samples`). Figures are drawn by `report.plots` from arrays computed here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig
from .data.device import Splits
from .engine import encode_all, evaluate


def run_metrics(model: torch.nn.Module, splits: Splits, cfg: RunConfig) -> dict[str, Any]:
    """Flat metrics: `train.X`, `test.X` for every term the model reports, and `gap.X = test - train`."""
    model.eval_iw_samples = cfg.eval.iw_samples  # read by models that have an IWAE bound
    out: dict[str, Any] = {}
    results = {"train": evaluate(model, splits.train, cfg.eval.batch_size),
               "test": evaluate(model, splits.test, cfg.eval.batch_size)}
    for split, values in results.items():
        out.update({f"{split}.{k}": v for k, v in values.items()})
    for k in results["test"]:
        if k in results["train"]:
            out[f"gap.{k}"] = results["test"][k] - results["train"][k]
    return out


def _images(logits_or_x: torch.Tensor) -> np.ndarray:
    return logits_or_x.float().cpu().numpy()


@torch.no_grad()
def run_figures(model, splits: Splits, ds, cfg: RunConfig, history: list[dict], out: Path) -> list[Path]:
    """The run report's figures, saved as PNGs in `out`; returns their paths."""
    from .report import plots

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    test = splits.test
    x = test.batch(slice(0, 10))["x"]
    figs = {"recon_grid": plots.recon_grid(_images(x), _images(torch.sigmoid(model.reconstruct(x)))),
            "loss_curves": plots.loss_curves(history)}
    n = min(len(test), cfg.eval.max_points)
    codes = encode_all(model, test.subset(torch.arange(n)), cfg.eval.batch_size).numpy()
    labels = test.y[:n].cpu().numpy()
    names = ds.classes or None
    if codes.shape[1] >= 2:
        figs["codes_pca"] = plots.scatter_2d(pca_2d(codes), labels, "test codes, PCA", names)
        if cfg.eval.tsne:
            from sklearn.manifold import TSNE  # here: a run without t-SNE never imports scikit-learn (~1 s)

            tsne = TSNE(2, init="pca", perplexity=min(30.0, (n - 1) / 3), random_state=cfg.seed)
            figs["codes_tsne"] = plots.scatter_2d(tsne.fit_transform(codes), labels, "test codes, t-SNE", names)
    if hasattr(model, "sample"):
        gen = torch.Generator(test.device).manual_seed(cfg.seed)
        figs["prior_samples"] = plots.image_grid(_images(model.sample(64, generator=gen)), 8, "samples from the prior")
        figs["interpolation"] = plots.strip(_images(interpolate(model, test.batch(slice(0, 2))["x"])),
                                            "latent interpolation between two test images")
    paths = []
    for name, fig in figs.items():
        paths.append(out / f"{name}.png")
        plots.save(fig, paths[-1])
    return paths


def pca_2d(codes: np.ndarray) -> np.ndarray:
    """(N, 2): the codes on their first two principal axes (an SVD of the centred codes, as PCA does)."""
    centred = torch.from_numpy(np.asarray(codes, dtype=np.float64))
    centred = centred - centred.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ vh[:2].T).numpy()


@torch.no_grad()
def interpolate(model, pair: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Images decoded along the straight line between the codes of two images: (steps, C, H, W)."""
    z = model.encode(pair)  # (2, D)
    t = torch.linspace(0, 1, steps, device=z.device)[:, None]
    return torch.sigmoid(model.decode((1 - t) * z[0] + t * z[1]))
