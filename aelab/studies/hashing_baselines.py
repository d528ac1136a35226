"""Unsupervised binary-hash baselines at a given bit count: random-projection LSH and PCA-ITQ.

Both are estimators in the scikit-learn style (constructors store, `fit` computes and returns self;
fitted state ends in `_`), taking flat float features (N, D) and giving bool bits (N, bits).
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError


class LSH:
    """Sign of random Gaussian projections of the centred data (Charikar 2002's SimHash)."""

    def __init__(self, bits: int, seed: int = 0):
        self.bits, self.seed = bits, seed

    def fit(self, x: np.ndarray) -> "LSH":
        self.mean_ = x.mean(axis=0)
        self.proj_ = np.random.default_rng(self.seed).standard_normal((x.shape[1], self.bits))
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean_) @ self.proj_ > 0  # (N, bits)


class ITQ:
    """Iterative quantisation (Gong & Lazebnik 2011): PCA to `bits` dimensions, then the rotation R
    that minimises the quantisation error ||sign(V R) - V R||_F^2, by alternating the bits with an
    orthogonal Procrustes step. `quantisation_error` measures it, so tests can compare with R = I.
    """

    def __init__(self, bits: int, iters: int = 50, seed: int = 0):
        self.bits, self.iters, self.seed = bits, iters, seed

    def project(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> PCA coordinates V (N, bits)."""
        return (x - self.mean_) @ self.pca_

    def fit(self, x: np.ndarray) -> "ITQ":
        x = np.asarray(x, dtype=np.float64)
        if self.bits > min(x.shape):
            raise ConfigError(f"PCA-ITQ needs bits <= the feature and sample count {min(x.shape)}, "
                              f"got {self.bits}")
        self.mean_ = x.mean(axis=0)
        xc = x - self.mean_
        _, vecs = np.linalg.eigh(xc.T @ xc)  # eigenvectors of the scatter matrix, ascending
        self.pca_ = vecs[:, ::-1][:, : self.bits]  # top principal directions (D, bits)
        v = self.project(x)
        rng = np.random.default_rng(self.seed)
        r, _ = np.linalg.qr(rng.standard_normal((self.bits, self.bits)))  # random orthogonal start
        for _ in range(self.iters):
            b = np.where(v @ r >= 0, 1.0, -1.0)
            u, _, wt = np.linalg.svd(v.T @ b)  # argmin_R ||B - V R|| over orthogonal R is U W^T
            r = u @ wt
        self.rotation_ = r
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return self.project(np.asarray(x, dtype=np.float64)) @ self.rotation_ >= 0  # (N, bits)

    def quantisation_error(self, x: np.ndarray, rotation: np.ndarray | None = None) -> float:
        """Mean over items of ||sign(V R) - V R||^2 (R = the fitted rotation unless given)."""
        vr = self.project(np.asarray(x, dtype=np.float64)) @ (self.rotation_ if rotation is None else rotation)
        return float(((np.where(vr >= 0, 1.0, -1.0) - vr) ** 2).sum(axis=1).mean())


class SpectralHashing:
    """Spectral hashing (Weiss, Torralba & Fergus 2008): PCA to (at most) `bits` directions; each bit is the sign
    of a sinusoid sin(pi/2 + k pi (v - lo) / (hi - lo)) along one direction v, the (direction,
    frequency k) pairs being the `bits` smallest eigenvalues of the 1-D Laplacian eigenfunctions of a
    uniform distribution on [lo, hi]: (k / (hi - lo))^2. Wide directions get several bits.
    """

    def __init__(self, bits: int):
        self.bits = bits

    def fit(self, x: np.ndarray) -> "SpectralHashing":
        x = np.asarray(x, dtype=np.float64)
        if self.bits > len(x):
            raise ConfigError(f"spectral hashing needs bits <= the sample count {len(x)}")
        self.mean_ = x.mean(axis=0)
        xc = x - self.mean_
        _, vecs = np.linalg.eigh(xc.T @ xc)
        self.pca_ = vecs[:, ::-1][:, : min(self.bits, x.shape[1])]  # (D, directions)
        v = xc @ self.pca_
        self.lo_, span = v.min(axis=0), v.max(axis=0) - v.min(axis=0) + 1e-12
        k = np.arange(1, self.bits + 1)[:, None]  # candidate frequencies per direction
        eig = (k / span[None, :]) ** 2  # (frequencies, directions): smaller = smoother mode
        order = np.argsort(eig, axis=None, kind="stable")[: self.bits]
        self.freq_, self.dim_ = np.unravel_index(order, eig.shape)
        self.freq_ = self.freq_ + 1
        self.span_ = span
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        v = (np.asarray(x, dtype=np.float64) - self.mean_) @ self.pca_
        arg = np.pi / 2 + self.freq_ * np.pi * (v[:, self.dim_] - self.lo_[self.dim_]) / self.span_[self.dim_]
        return np.sin(arg) > 0  # (N, bits)
