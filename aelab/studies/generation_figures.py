"""Figures of the `generation` study: sample grids, interpolation strips and GIFs, attribute vectors
and latent traversals, for the VAE and the plain AE (codes from a fitted Gaussian). Drawn once, from
the first seed's models; all numbers are in generation.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.device import DeviceData
from ..engine import encode_all
from ..report import plots


def class_mean_code(model, data: DeviceData, label: int) -> torch.Tensor:
    """Mean code (d,) of the images of class `label`."""
    return encode_all(model, data.subset(torch.nonzero(data.y == label).flatten())).mean(0)


def attribute_vector(model, data: DeviceData, a: int, b: int) -> torch.Tensor:
    """Mean code of class a minus mean code of class b, (d,): added to a B image's code, it should look A."""
    return class_mean_code(model, data, a) - class_mean_code(model, data, b)


def ink_vector(model, data: DeviceData) -> torch.Tensor:
    """Mean code of the heaviest-ink quarter of the images minus that of the lightest quarter, (d,)."""
    ink = data.x.float().flatten(1).sum(1)
    lo, hi = torch.quantile(ink, 0.25), torch.quantile(ink, 0.75)
    codes = encode_all(model, data)
    return codes[(ink >= hi).cpu()].mean(0) - codes[(ink <= lo).cpu()].mean(0)


@torch.inference_mode()
def decode_images(model, z: torch.Tensor, device, batch: int = 1024) -> torch.Tensor:
    """Codes (n, d) -> images (n, C, H, W) in [0, 1] on the host (the model in eval mode)."""
    model.eval()
    return torch.cat([torch.sigmoid(model.decode(z[s:s + batch].to(device)).float()).cpu()
                      for s in range(0, len(z), batch)])


def _decode(model, z: torch.Tensor) -> np.ndarray:
    return decode_images(model, z, next(model.parameters()).device).numpy()


def _pair(te: DeviceData) -> DeviceData:
    """Two test images of different classes (the first image and the first of another class)."""
    other = torch.nonzero(te.y != te.y[0]).flatten()
    j = int(other[0]) if len(other) else 1
    return te.subset(torch.tensor([0, j], device=te.device))


def draw_interpolation(name: str, model, te: DeviceData, steps: int, figs: Path) -> None:
    z = encode_all(model, _pair(te))  # (2, d)
    t = torch.linspace(0, 1, steps)[:, None]
    frames = _decode(model, (1 - t) * z[0] + t * z[1])  # (steps, C, H, W)
    plots.save(plots.strip(frames, f"{name}: interpolation between two test images"), figs / f"interpolation_{name}.png")
    plots.save_gif(list(frames) + list(frames[-2:0:-1]), figs / f"interpolation_{name}.gif")


def draw_attributes(name: str, model, tr: DeviceData, te: DeviceData, ab: tuple[int, int],
                    classes: list[str], figs: Path) -> None:
    """Rows: test images of class B (then any images for ink); columns: code + alpha * vector."""
    a, b = ab
    alphas = torch.linspace(0, 1.5, 7)[:, None, None]  # (7, 1, 1)
    rows_b = te.subset(torch.nonzero(te.y == b).flatten()[:6])
    for tag, vec, data, title in (
            ("class", attribute_vector(model, tr, a, b), rows_b, f"+ alpha ({classes[a]} - {classes[b]})"),
            ("ink", ink_vector(model, tr), te.subset(torch.arange(6, device=te.device)), "+ alpha (heavy - light ink)")):
        z = encode_all(model, data)  # (r, d)
        grid = _decode(model, (z[None] + alphas * vec).transpose(0, 1).reshape(-1, z.shape[1]))
        plots.save(plots.image_grid(grid, nrow=len(alphas), title=f"{name}: code {title}, alpha 0 to 1.5"),
                   figs / f"attribute_{tag}_{name}.png")


def draw_traversal(name: str, model, center: torch.Tensor, scale: torch.Tensor, rng: float, figs: Path) -> None:
    """Row i: dimension i swept from center - rng*scale to center + rng*scale, the others at center."""
    d = len(center)
    vals = torch.linspace(-rng, rng, 9)
    z = center.repeat(d, 9, 1)  # (d, 9, d)
    for i in range(d):
        z[i, :, i] = center[i] + vals * scale[i]
    grid = _decode(model, z.reshape(-1, d))
    plots.save(plots.image_grid(grid, nrow=9, title=f"{name}: one row per latent dimension, ±{rng:g} std"),
               figs / f"traversal_{name}.png")


def draw_figures(cfg, vae, ae, gauss, tr: DeviceData, te: DeviceData, ab: tuple[int, int],
                 classes: list[str], figs: Path) -> None:
    classes = classes or [str(i) for i in range(int(tr.y.max()) + 1)]
    gen = torch.Generator().manual_seed(cfg.seed)
    d = cfg.latent_dim
    plots.save(plots.image_grid(_decode(vae, torch.randn(64, d, generator=gen)), 8, "VAE: samples from the prior"),
               figs / "samples_vae.png")
    plots.save(plots.image_grid(_decode(ae, gauss.sample(64, gen)), 8, "AE: codes from a Gaussian fitted to its codes"),
               figs / "samples_ae_gauss.png")
    plots.save(plots.image_grid(te.x[:64].float().div(255).cpu().numpy(), 8, "Real test images"), figs / "real_test.png")
    for name, model in (("vae", vae), ("ae", ae)):
        draw_interpolation(name, model, te, cfg.steps, figs)
        draw_attributes(name, model, tr, te, ab, classes, figs)
    draw_traversal("vae", vae, torch.zeros(d), torch.ones(d), cfg.traversal_range, figs)
    draw_traversal("ae", ae, gauss.mean.float(), gauss.std.float(), cfg.traversal_range, figs)
