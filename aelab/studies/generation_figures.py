"""Figures of the `generation` study: sample grids, interpolation strips and GIFs, attribute vectors
and latent traversals, for the VAE and the plain AE (codes from a fitted Gaussian). The first seed's
cell decodes every image they show (`figure_arrays`); the summary draws them from the stored arrays
(`draw_figures`); all numbers are in generation.py.
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


def interpolation(model, te: DeviceData, steps: int) -> np.ndarray:
    """Frames (steps, C, H, W) decoded along the line between the codes of two test images."""
    z = encode_all(model, _pair(te))  # (2, d)
    t = torch.linspace(0, 1, steps)[:, None]
    return _decode(model, (1 - t) * z[0] + t * z[1])


def attributes(model, tr: DeviceData, te: DeviceData, ab: tuple[int, int]) -> dict[str, np.ndarray]:
    """Rows: test images of class B (then any images for ink); columns: code + alpha * vector, alpha 0..1.5."""
    a, b = ab
    alphas = torch.linspace(0, 1.5, 7)[:, None, None]  # (7, 1, 1)
    out = {}
    for tag, vec, data in (("class", attribute_vector(model, tr, a, b), te.subset(torch.nonzero(te.y == b).flatten()[:6])),
                           ("ink", ink_vector(model, tr), te.subset(torch.arange(6, device=te.device)))):
        z = encode_all(model, data)  # (r, d)
        out[tag] = _decode(model, (z[None] + alphas * vec).transpose(0, 1).reshape(-1, z.shape[1]))
    return out


def traversal(model, center: torch.Tensor, scale: torch.Tensor, rng: float) -> np.ndarray:
    """Row i: dimension i swept from center - rng*scale to center + rng*scale, the others at center."""
    d = len(center)
    vals = torch.linspace(-rng, rng, 9)
    z = center.repeat(d, 9, 1)  # (d, 9, d)
    for i in range(d):
        z[i, :, i] = center[i] + vals * scale[i]
    return _decode(model, z.reshape(-1, d))


def figure_arrays(cfg, vae, ae, gauss, tr: DeviceData, te: DeviceData, ab: tuple[int, int]) -> dict[str, np.ndarray]:
    """Every image the figures show (the first seed's models), as arrays a cell can store."""
    gen = torch.Generator().manual_seed(cfg.seed)
    d = cfg.latent_dim
    out = {"fig.samples_vae": _decode(vae, torch.randn(64, d, generator=gen)),
           "fig.samples_ae_gauss": _decode(ae, gauss.sample(64, gen)),
           "fig.real_test": te.x[:64].float().div(255).cpu().numpy()}
    for name, model in (("vae", vae), ("ae", ae)):
        out[f"fig.interpolation_{name}"] = interpolation(model, te, cfg.steps)
        out |= {f"fig.attribute_{tag}_{name}": g for tag, g in attributes(model, tr, te, ab).items()}
    out["fig.traversal_vae"] = traversal(vae, torch.zeros(d), torch.ones(d), cfg.traversal_range)
    out["fig.traversal_ae"] = traversal(ae, gauss.mean.float(), gauss.std.float(), cfg.traversal_range)
    return out


def draw_figures(cfg, row: dict, attribute: str, figs: Path) -> None:
    """The generation study's figures from the first seed's stored arrays."""
    plots.save(plots.image_grid(row["fig.samples_vae"], 8, "VAE: samples from the prior"), figs / "samples_vae.png")
    plots.save(plots.image_grid(row["fig.samples_ae_gauss"], 8, "AE: codes from a Gaussian fitted to its codes"),
               figs / "samples_ae_gauss.png")
    plots.save(plots.image_grid(row["fig.real_test"], 8, "Real test images"), figs / "real_test.png")
    for name in ("vae", "ae"):
        frames = row[f"fig.interpolation_{name}"]
        plots.save(plots.strip(frames, f"{name}: interpolation between two test images"), figs / f"interpolation_{name}.png")
        plots.save_gif(list(frames) + list(frames[-2:0:-1]), figs / f"interpolation_{name}.gif")
        for tag, title in (("class", f"+ alpha ({attribute})"), ("ink", "+ alpha (heavy - light ink)")):
            plots.save(plots.image_grid(row[f"fig.attribute_{tag}_{name}"], nrow=7,
                                        title=f"{name}: code {title}, alpha 0 to 1.5"), figs / f"attribute_{tag}_{name}.png")
        plots.save(plots.image_grid(row[f"fig.traversal_{name}"], nrow=9,
                                    title=f"{name}: one row per latent dimension, ±{cfg.traversal_range:g} std"),
                   figs / f"traversal_{name}.png")
