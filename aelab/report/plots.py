"""Figures for run reports and studies: numpy arrays in, a matplotlib `Figure` out; never trains.

Every function builds a `matplotlib.figure.Figure` on an Agg canvas rather than going through
pyplot: nothing opens a display, and no global figure state leaks from one call (or one test, or
one thread) into the next. `save` writes a PNG, `save_gif` an animated GIF.

Images are float arrays in [0, 1] shaped (N, C, H, W) with C = 1 (grey) or 3 (RGB), as the models
produce them; values outside [0, 1] are clipped, not rescaled, unless a function says otherwise.

    fig = recon_grid(x_test[:10], x_hat[:10])
    save(fig, run_dir / "figures" / "recon_grid.png")
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # matplotlib is imported when the first figure is drawn: a study's workers never draw
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_PAD = 1  # pixels of white between tiled images
_MAX_INCHES = 8.0  # the longer side of an image figure
_GIF_MIN_SIDE = 128  # GIF frames are upscaled until their shorter side is at least this


# ----------------------------------------------------------------------------- images as arrays


def _check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    """`images` as a float (N, C, H, W) array with C in {1, 3}; a single (C, H, W) image is N = 1."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be (N, C, H, W) with C = 1 or 3, got shape {images.shape}")
    if len(images) == 0:
        raise ValueError(f"{name} is empty")
    return images


def _rescale_each(images: np.ndarray) -> np.ndarray:
    """Each image min-max scaled to [0, 1]: filters are weights, not pixel values."""
    lo = images.min(axis=(1, 2, 3), keepdims=True)
    hi = images.max(axis=(1, 2, 3), keepdims=True)
    return (images - lo) / np.maximum(hi - lo, 1e-12)


def to_uint8_grid(images: np.ndarray, nrow: int, pad: int = _PAD) -> np.ndarray:
    """Tile (N, C, H, W) images, `nrow` per row (as torchvision's make_grid), into (H', W', C) uint8.

    Missing cells in the last row and the `pad`-pixel gutters are white, so a grid of dark digits on
    a light page reads as separate images.
    """
    images = _check_images(images)
    n, c, h, w = images.shape
    ncol = max(1, min(nrow, n))
    nrows = math.ceil(n / ncol)
    grid = np.ones((c, nrows * (h + pad) + pad, ncol * (w + pad) + pad), dtype=np.float32)
    for i, img in enumerate(np.clip(images, 0.0, 1.0)):
        r, q = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = img
    return np.round(grid.transpose(1, 2, 0) * 255).astype(np.uint8)  # (H', W', C)


def _show(ax: Axes, grid: np.ndarray) -> None:
    """Draw a (H, W, C) uint8 grid with square pixels and no ticks or frame."""
    if grid.shape[-1] == 1:
        ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _new_figure(width: float, height: float) -> Figure:
    """A Figure on its own Agg canvas: no pyplot, no display, nothing shared between calls."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _image_size(rows_px: int, cols_px: int, title: bool) -> tuple[float, float]:
    """Figure inches for a (rows_px, cols_px) picture: longer side ~_MAX_INCHES, room for a title."""
    scale = _MAX_INCHES / max(rows_px, cols_px)
    scale = min(scale, 0.25)  # never blow a 16-pixel strip up to a poster
    width, height = max(cols_px * scale, 2.0), max(rows_px * scale, 0.6)
    return width, height + (0.4 if title else 0.0)


# ----------------------------------------------------------------------------- image figures


def image_grid(images: np.ndarray, nrow: int, title: str = "", normalize: bool = False) -> Figure:
    """A grid of images, `nrow` per row: samples from a prior, decoder filters, top activations.

    `normalize=True` rescales each image to its own [0, 1] range, which filters need.
    """
    images = _check_images(images)
    if normalize:
        images = _rescale_each(images)
    grid = to_uint8_grid(images, nrow)
    fig = _new_figure(*_image_size(grid.shape[0], grid.shape[1], bool(title)))
    _show(fig.add_subplot(), grid)
    if title:
        fig.suptitle(title)
    return fig


def strip(images: np.ndarray, title: str = "") -> Figure:
    """One row of images, e.g. decodings along a line between two codes (latent interpolation)."""
    images = _check_images(images)
    return image_grid(images, nrow=len(images), title=title)


def recon_grid(originals: np.ndarray, recons: np.ndarray, n: int = 10) -> Figure:
    """The first `n` test images in one row, their reconstructions in the row below."""
    originals = _check_images(originals, "originals")[:n]
    recons = _check_images(recons, "recons")[:n]
    if originals.shape != recons.shape:
        raise ValueError(f"originals {originals.shape} and recons {recons.shape} differ in shape")
    top, bottom = to_uint8_grid(originals, len(originals)), to_uint8_grid(recons, len(recons))
    width, height = _image_size(2 * top.shape[0], top.shape[1], title=True)
    fig = _new_figure(width + 1.2, height)  # + room for the row labels
    axes = fig.subplots(2, 1)
    for ax, grid, label in zip(axes, (top, bottom), ("original", "reconstruction")):
        _show(ax, grid)
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    fig.suptitle("Test images and their reconstructions")
    return fig


# ----------------------------------------------------------------------------- curves


def _number(value: object) -> float:
    """`value` as a float, or NaN when it is missing, a bool or not a number (a gap in the line)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _terms(history: Sequence[Mapping]) -> list[str]:
    """The X of every `train.X` / `val.X` key with at least one number, in first-seen order."""
    terms: dict[str, None] = {}
    for row in history:
        for key, value in row.items():
            split, _, term = key.partition(".")
            if split in ("train", "val") and term and not math.isnan(_number(value)):
                terms.setdefault(term, None)
    return sorted(terms, key=lambda t: t != "loss")  # the total loss first, the rest as logged


@functools.cache
def _plain_log_formatter() -> type:
    """LogFormatter's choice of which log ticks to label, written as plain numbers: 0.04, not 4e-02."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:.3g}" if super().__call__(x, pos) else ""

    return PlainLogFormatter


def _plot_term(ax: Axes, epochs: np.ndarray, history: Sequence[Mapping], term: str) -> None:
    """train.term and val.term against epoch on one axes; log scale when every value is > 0."""
    finite = []
    for split, style in (("train", "-"), ("val", "--")):
        ys = np.array([_number(row.get(f"{split}.{term}")) for row in history])
        ok = ~np.isnan(ys)
        if ok.any():
            ax.plot(epochs[ok], ys[ok], style, marker="." if ok.sum() < 30 else None, label=split)
            finite.append(ys[ok & np.isfinite(ys)])
    values = np.concatenate(finite) if finite else np.empty(0)
    if values.size and (values > 0).all():
        ax.set_yscale("log")
        # Plain numbers (0.04, not 4x10^-2), also on the minor ticks labelled when a curve spans
        # less than a decade, which is most validation curves after the first epochs.
        ax.yaxis.set_major_formatter(_plain_log_formatter()())
        ax.yaxis.set_minor_formatter(_plain_log_formatter()(labelOnlyBase=False))
    ax.set_title(term)
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def loss_curves(history: Sequence[Mapping]) -> Figure:
    """One subplot per loss term X, `train.X` solid and `val.X` dashed against the epoch.

    `history` is the run's per-epoch rows (history.jsonl); missing or non-numeric values leave gaps.
    A history with nothing to plot gives a figure that says so rather than an error, so a report
    of a run killed in its first epoch still renders.
    """
    terms = _terms(history)
    if not terms:
        fig = _new_figure(4, 1.5)
        fig.text(0.5, 0.5, "no train./val. values in the history", ha="center", va="center")
        return fig
    epochs = np.array([_number(row.get("epoch", i + 1)) for i, row in enumerate(history)])
    epochs = np.where(np.isnan(epochs), np.arange(1, len(history) + 1), epochs)
    ncol = min(3, len(terms))
    nrows = math.ceil(len(terms) / ncol)
    fig = _new_figure(4.0 * ncol, 3.0 * nrows)
    axes = fig.subplots(nrows, ncol, squeeze=False).ravel()
    for ax, term in zip(axes, terms):
        _plot_term(ax, epochs, history, term)
    for ax in axes[len(terms) :]:
        ax.set_visible(False)
    fig.suptitle("Training curves")
    return fig


def scatter_2d(
    points: np.ndarray,
    labels: np.ndarray | None,
    title: str,
    class_names: Sequence[str] | None = None,
    xlabel: str = "component 1",
    ylabel: str = "component 2",
) -> Figure:
    """(N, 2) points coloured by class (tab10; tab20 beyond ten classes), with a legend of names.

    `labels=None` draws every point in one colour (an unlabelled set). `class_names[k]` names
    label k; without it the label values themselves are the names.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be (N, 2), got shape {points.shape}")
    size = float(np.clip(8000 / max(len(points), 1), 4, 36))  # fewer points, bigger dots
    fig = _new_figure(6.5, 5.0)
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.7, linewidths=0)
    else:
        labels = np.asarray(labels)
        if labels.shape != (len(points),):
            raise ValueError(f"labels must be ({len(points)},), got shape {labels.shape}")
        _scatter_classes(ax, points, labels, class_names, size)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


def _scatter_classes(
    ax: Axes, points: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None, size: float
) -> None:
    """One scatter call per class so the legend gets one entry per class, in label order."""
    import matplotlib

    classes = np.unique(labels)
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for k, cls in enumerate(classes):
        name = class_names[int(cls)] if class_names is not None else str(cls)
        at = labels == cls
        color = cmap(k % cmap.N)
        ax.scatter(points[at, 0], points[at, 1], s=size, color=color, alpha=0.7, linewidths=0, label=name)
    many = len(classes) > 10
    ax.legend(
        markerscale=max(1.0, 6 / math.sqrt(size)),  # legend dots readable however small the points
        fontsize="small",
        loc="upper left" if many else "best",
        bbox_to_anchor=(1.01, 1.0) if many else None,
        frameon=False if many else True,
    )


def metric_vs(
    x: Sequence[float] | np.ndarray,
    ys: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
) -> Figure:
    """One line per entry of `ys` (name -> (mean, std) over seeds), with a mean ± std band.

    For studies: accuracy against labels per class, MSE against code size, ... `std=None`
    draws the line alone.
    """
    x = np.asarray(x, dtype=np.float64)
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    for name, (mean, std) in ys.items():
        mean = np.asarray(mean, dtype=np.float64)
        if mean.shape != x.shape:
            raise ValueError(f"{name}: mean has shape {mean.shape}, x has {x.shape}")
        (line,) = ax.plot(x, mean, marker="o", markersize=4, label=name)
        if std is not None:
            std = np.asarray(std, dtype=np.float64)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    if logx:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ys:
        ax.legend(fontsize="small")
    return fig


# ----------------------------------------------------------------------------- files


def small_multiples(panels: Mapping[str, Sequence[tuple[str, np.ndarray]]], xlabel: str, title: str,
                    cols: int = 4) -> Figure:
    """One panel per key, each a few (label, (k, 2) x-y array) lines: e.g. every arm's validation curves."""
    cols = max(1, min(cols, len(panels)))
    rows = math.ceil(len(panels) / cols)
    fig = _new_figure(3.2 * cols, 2.4 * rows)
    for i, (name, lines) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, xy in lines:
            xy = np.asarray(xy, dtype=float).reshape(-1, 2)
            ax.plot(xy[:, 0], xy[:, 1], linewidth=1, alpha=0.8, label=label)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG (100 dpi), creating parent folders; returns the path.

    Every figure here has constrained layout, which already fits labels and titles inside it; a "tight"
    bounding box would draw it twice. zlib level 1: half the encoding time, files ~20% larger.
    AELAB_FIGURES=draft (the test suite sets it) draws every artist as usual but skips the layout
    engine and writes 30 dpi, for runs where no one looks at the figures (the layout engine is a large part
    of a figure with axes: it measures every tick label before the figure is drawn)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dpi = 100
    if check_figure_mode() == "draft":
        fig.set_layout_engine("none")
        dpi = 30
    fig.savefig(path, format="png", dpi=dpi, facecolor="white", pil_kwargs={"compress_level": 1})
    return path


def check_figure_mode() -> str:
    """AELAB_FIGURES: "" (full figures) or "draft"; anything else is a ConfigError naming the fix."""
    mode = os.environ.get("AELAB_FIGURES", "")
    if mode not in ("", "draft"):
        from ..errors import ConfigError

        raise ConfigError(f"AELAB_FIGURES={mode!r}: set it to draft (fast, rough figures) or leave it unset")
    return mode


def _frame_image(frame: np.ndarray) -> Image.Image:
    """A (C, H, W) float frame as a PIL image, upscaled (nearest) so 8x8 digits stay visible."""
    pixels = to_uint8_grid(frame, nrow=1, pad=0)  # (H, W, C) uint8
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    scale = max(1, math.ceil(_GIF_MIN_SIDE / min(image.size)))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def save_gif(frames: Sequence[np.ndarray], path: str | Path, duration_ms: int = 100) -> Path:
    """Write (C, H, W) float frames as an endlessly looping animated GIF; returns the path."""
    if len(frames) == 0:
        raise ValueError("save_gif needs at least one frame")
    images = [_frame_image(np.asarray(f)) for f in frames]
    if len({im.size for im in images}) > 1:
        raise ValueError("all GIF frames must have the same shape")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path


def add_thumbnails(fig, points: np.ndarray, images: np.ndarray):
    """Draw images (n, C, H, W) in [0, 1] at their 2-D positions `points` (n, 2) on the figure's axes."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    ax = fig.axes[0]
    zoom = 16 / images.shape[-1] if images.shape[-1] < 16 else 0.6
    for pos, image in zip(points, images):
        img = image.transpose(1, 2, 0).squeeze()
        box = OffsetImage(img, cmap="gray_r" if img.ndim == 2 else None, zoom=zoom)
        ax.add_artist(AnnotationBbox(box, pos, frameon=True, pad=0.1))
    return fig
