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
