"""The latent space the explorer shows: test images, their codes, 2-D maps, and the edits on codes.

Nothing here knows about Bokeh: `Space` answers in numpy arrays (codes, uint8 images), so the math is
tested without a browser. Codes and maps are computed once and cached in the run folder as
`explore.npz` (plain arrays, no pickle), keyed by a hash of the weights and the data set, so a second
start reads them instead of encoding 10,000 images and fitting PCA / t-SNE / UMAP again.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..data.device import DeviceData
from ..engine import encode_all
from ..errors import CheckpointError, ConfigError

CACHE = "explore.npz"
MAPS = ("pca", "tsne", "umap")
MAX_SLIDERS = 12  # codes this wide or narrower get one slider per dimension; wider: principal directions
INK_FRACTION = 0.1  # the "ink" vector: mean code of the heaviest 10% minus the lightest 10%


@dataclass
class Space:
    """The test images of a run with their codes and 2-D maps, and the model that decodes codes."""

    model: torch.nn.Module
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    classes: list[str]
    codes: np.ndarray  # float32 (N, D)
    maps: dict[str, np.ndarray]  # view name -> float32 (N, 2)
    note: str = ""  # why the map is all there is (a model without a decoder)
    basis: np.ndarray = field(init=False)  # (K, D) slider directions, unit length
    scale: np.ndarray = field(init=False)  # (K,) std of the codes along each: a slider's unit
    _ink: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.basis, self.scale = directions(self.codes)

    @property
    def decodes(self) -> bool:
        return bool(getattr(self.model, "has_decoder", True))

    @property
    def spherical(self) -> bool:
        """A Gaussian prior (the VAE's `sample`): the spherical path between codes is the natural one."""
        return hasattr(self.model, "sample")

    def class_name(self, label: int) -> str:
        return self.classes[label] if 0 <= label < len(self.classes) else str(label)

    @torch.no_grad()
    def decode(self, z: np.ndarray) -> np.ndarray:
        """Codes (K, D) -> uint8 images (K, C, H, W), decoded by the run's model on the CPU."""
        img = self.model.decode_image(torch.as_tensor(np.asarray(z, np.float32)))
        return (img.float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    def morph(self, i: int, j: int, steps: int) -> dict[str, np.ndarray]:
        """Codes along the path from point i to point j, `steps` of them, ends included: the straight
        line, and for a model with a Gaussian prior also the spherical path (slerp)."""
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        a, b = self.codes[i], self.codes[j]
        paths = {"linear": (1 - t) * a + t * b}
        if self.spherical:
            paths["spherical"] = slerp(a, b, t)
        return paths

    def attribute(self, kind: str, a: int = 0, b: int = 1) -> np.ndarray:
        """An attribute vector (D,): "class" = mean code of class b minus class a; "ink" = mean code of
        the heaviest images (most ink) minus the lightest."""
        if kind == "class":
            return mean_code(self.codes, self.labels == b) - mean_code(self.codes, self.labels == a)
        if kind != "ink":
            raise ConfigError(f"unknown attribute {kind!r}; choose class or ink")
        if self._ink is None:  # computed once: every slider move asks for it
            self._ink = self._ink_vector()
        return self._ink

    def _ink_vector(self) -> np.ndarray:
        ink = self.images.reshape(len(self.images), -1).astype(np.float64).sum(1)
        k = max(1, int(len(ink) * INK_FRACTION))
        order = np.argsort(ink, kind="stable")
        return self.codes[order[-k:]].mean(0) - self.codes[order[:k]].mean(0)

    def edit(self, i: int, sliders: list[float] | np.ndarray, vector: np.ndarray | None = None,
             strength: float = 0.0) -> np.ndarray:
        """The code of point i moved by each slider (in std units along its direction) and by
        `strength` times an attribute vector: (D,)."""
        z = self.codes[i] + (np.asarray(sliders, np.float32) * self.scale) @ self.basis
        return (z + strength * vector if vector is not None else z).astype(np.float32)


def mean_code(codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    if not rows.any():
        raise ConfigError("that class has no test image in the map; pick another")
    return codes[rows].mean(0)


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation (White 2016) between codes a and b (D,) at t (K, 1): (K, D)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = float(np.dot(a, b) / max(na * nb, 1e-12))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if omega < 1e-4:  # (nearly) parallel: the straight line is the same path
        return (1 - t) * a + t * b
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def directions(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slider directions: each code dimension when there are few, else the top principal directions
    of the codes; with the std of the codes along each (so a slider moves in data-sized steps)."""
    d = codes.shape[1]
    if d <= MAX_SLIDERS:
        return np.eye(d, dtype=np.float32), codes.std(0).astype(np.float32) + 1e-6
    from sklearn.decomposition import PCA

    pca = PCA(MAX_SLIDERS, random_state=0).fit(codes)
    return pca.components_.astype(np.float32), np.sqrt(pca.explained_variance_).astype(np.float32) + 1e-6


# ----------------------------------------------------------------------------- codes, maps, cache


def fingerprint(run_dir: Path, data_name: str, n: int) -> str:
    """What the cached codes depend on: the weights' bytes, the data set and the number of points."""
    h = hashlib.sha256((run_dir / "model.safetensors").read_bytes())
    h.update(json.dumps([data_name, n]).encode())
    return h.hexdigest()[:32]


def project(codes: np.ndarray, view: str, seed: int = 0) -> np.ndarray:
    """2-D map of the codes (N, D) -> (N, 2) by PCA, t-SNE or UMAP."""
    if codes.shape[1] < 2:  # a 1-D code: its value against zero
        return np.hstack([codes, np.zeros_like(codes)]).astype(np.float32)
    if view == "pca":
        from sklearn.decomposition import PCA

        return PCA(2, random_state=seed).fit_transform(codes).astype(np.float32)
    if view == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(codes) - 1) / 3)
        return TSNE(2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(codes).astype(np.float32)
    import umap  # the umap extra; checked by `wanted_maps` before any work

    return umap.UMAP(random_state=seed).fit_transform(codes).astype(np.float32)


def wanted_maps(asked: list[str] | None) -> list[str]:
    """The maps to show: `asked`, else PCA plus UMAP when umap-learn is installed (t-SNE only when asked)."""
    try:
        import umap  # noqa: F401
        have_umap = True
    except ImportError:
        have_umap = False
    views = list(asked) if asked else ["pca"] + (["umap"] if have_umap else [])
    for v in views:
        if v not in MAPS:
            raise ConfigError(f"unknown map {v!r}; choose from {', '.join(MAPS)}")
    if "umap" in views and not have_umap:
        raise ConfigError("the umap map needs umap-learn: pip install 'aelab[umap]' (or leave umap out of --maps)")
    return views


def cached_codes(model: torch.nn.Module, images: np.ndarray, run_dir: Path, key: str, views: list[str],
                 seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], bool]:
    """Codes and maps from run_dir/explore.npz when its key matches, else computed and stored.

    Returns (codes, maps, whether anything was computed). A map missing from the cache is computed and
    added; a run folder that cannot be written is no error (the next start computes again).
    """
    path = run_dir / CACHE
    stored = _read_cache(path, key)
    computed = "codes" not in stored
    codes = stored["codes"] if not computed else _encode(model, images)
    maps = {}
    for v in views:
        if f"map_{v}" not in stored:
            stored[f"map_{v}"], computed = project(codes, v, seed), True
        maps[v] = stored[f"map_{v}"]
    if computed:
        stored.update(codes=codes, key=np.array(key))
        buf = io.BytesIO()
        np.savez(buf, **stored)
        try:
            atomic_write(path, buf.getvalue())
        except CheckpointError:
            pass
    return codes, maps, computed


def _read_cache(path: Path, key: str) -> dict[str, np.ndarray]:
    """The cached arrays when their key matches; none for no cache, an old or a broken one (computed afresh)."""
    from ..data.formats import read_npz_arrays
    from ..errors import DataError

    try:
        stored = read_npz_arrays(path)
    except DataError:
        return {}
    arrays = [v for k, v in stored.items() if k != "key"]
    ok = "key" in stored and str(stored["key"]) == key and len({len(v) for v in arrays}) <= 1 and all(
        v.dtype == np.float32 and v.ndim == 2 for v in arrays)  # codes (N, D) and maps (N, 2)
    return stored if ok else {}


def _encode(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    data = DeviceData(torch.from_numpy(images), torch.zeros(len(images), dtype=torch.int64))
    with torch.no_grad():
        return encode_all(model, data, 1000).numpy().astype(np.float32)


def load_space(run_dir: str | Path, points: int = 10_000, maps: list[str] | None = None) -> tuple[Space, bool]:
    """The Space of a finished run: its first `points` test images; and whether the cache was (re)built."""
    from ..data import load_dataset
    from ..runs import load_run, read_config

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)  # "not an aelab run folder" before anything else
    if not (run_dir / "model.safetensors").is_file():
        raise CheckpointError(f"run {run_dir} has no weights (model.safetensors): has it finished? "
                              f"`aelab train --resume {run_dir}` finishes a stopped run")
    if points <= 0:
        raise ConfigError("--points must be > 0")
    views = wanted_maps(maps)
    run = load_run(run_dir)
    ds = load_dataset(cfg.data.name, cfg.data.data_dir or None, cfg.data.download)
    n = min(points, len(ds.x_test))
    images, labels = np.ascontiguousarray(ds.x_test[:n]), np.asarray(ds.y_test[:n], np.int64)
    model = run.model.to("cpu").eval()
    key = fingerprint(run_dir, cfg.data.name, n)
    codes, maps_, computed = cached_codes(model, images, run_dir, key, views, cfg.seed)
    note = "" if getattr(model, "has_decoder", True) else (
        f"{model.name} has no decoder of its own (its decoder is an adversary that probes the "
        "representation): the map only")
    return Space(model, images, labels, list(ds.classes), codes, maps_, note), computed
