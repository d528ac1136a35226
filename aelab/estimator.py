"""A scikit-learn transformer over the engine: an autoencoder in a `Pipeline` before any classifier.

    from sklearn.pipeline import make_pipeline
    from sklearn.linear_model import LogisticRegression
    pipe = make_pipeline(AutoencoderTransformer("dense", latent_dim=32, epochs=20), LogisticRegression())
    pipe.fit(X_train, y_train)      # X: (n, n_features) floats, images flattened, ideally in [0, 1]

Constructors store, `fit` computes (STYLE 12): fitted state ends in `_`. X is rescaled by the training
set's overall minimum and maximum (one pair of scalars, so an image keeps its contrast between pixels)
into [0, 1], the range the decoders' sigmoid outputs; `inverse_transform` maps back.
Model options go in `model_params` (a dict), not `**kwargs`: `get_params`/`clone` only see named
constructor arguments, so keyword arguments would be lost on every clone (e.g. in cross-validation).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .config import TrainConfig, set_key
from .data.device import DeviceData, pick_device
from .engine import encode_all, fit
from .errors import ConfigError
from .models import build_model, get_model_class


class EstimatorParamError(ConfigError, ValueError):
    """A bad constructor parameter: an aelab ConfigError that scikit-learn also sees as a ValueError."""


class AutoencoderTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """fit: train an aelab autoencoder on X; transform: its codes (n, latent_dim); inverse_transform: images."""

    def __init__(self, model: str = "conv", latent_dim: int = 16, epochs: int = 10, batch_size: int = 128,
                 lr: float = 3e-3, device: str = "cpu", random_state: int | None = None,
                 image_shape: tuple[int, int, int] | None = None, model_params: dict | None = None):
        self.model, self.latent_dim, self.epochs, self.batch_size = model, latent_dim, epochs, batch_size
        self.lr, self.device, self.random_state = lr, device, random_state
        self.image_shape, self.model_params = image_shape, model_params

    def _shape(self, n_features: int) -> tuple[int, int, int]:
        """(C, H, W) of one row: `image_shape`, else 1 x s x s when n_features = s^2, else 1 x 1 x n."""
        if self.image_shape is not None:
            shape = tuple(int(s) for s in self.image_shape)
            if len(shape) != 3 or math.prod(shape) != n_features:
                raise EstimatorParamError(f"image_shape={self.image_shape} does not hold {n_features} features")
            return shape
        s = math.isqrt(n_features)
        return (1, s, s) if s * s == n_features else (1, 1, n_features)

    def _build(self, shape: tuple[int, int, int]):
        if self.latent_dim <= 0 or self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise EstimatorParamError("latent_dim, epochs, batch_size and lr must be > 0")
        cfg = get_model_class(self.model).Config(name=self.model)  # an unknown name: ConfigError
        cfg.latent_dim = self.latent_dim
        for k, v in (self.model_params or {}).items():
            set_key(cfg, k, v)  # checked like a `model.k=v` override; never stored on self
        return build_model(cfg, shape)

    def _data(self, X: np.ndarray) -> DeviceData:
        """Rows -> DeviceData. Stored as float64 x 255 (not uint8: no quantisation) because
        `DeviceData.batch` divides by 255 after `.float()`, which copies a float64 tensor."""
        x = np.clip((X - self.data_min_) / self.data_range_, 0.0, 1.0) * 255.0
        x = torch.as_tensor(x.reshape(len(X), *self.image_shape_), dtype=torch.float64, device=self.device_)
        return DeviceData(x, torch.full((len(X),), -1, dtype=torch.int64, device=self.device_))

    def fit(self, X, y=None) -> "AutoencoderTransformer":
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        self.image_shape_ = self._shape(X.shape[1])
        self.device_ = pick_device(self.device)
        self.data_min_ = float(X.min())
        self.data_range_ = max(float(X.max()) - self.data_min_, 1e-12)
        seed = int(np.random.default_rng(self.random_state).integers(2**31)) if not isinstance(
            self.random_state, (int, np.integer)) else int(self.random_state)
        torch.manual_seed(seed)
        self.model_ = self._build(self.image_shape_)
        cfg = TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, device=str(self.device_),
                          progress="off")
        self.history_ = fit(self.model_, self._data(X), cfg, seed=seed)
        self._n_features_out = self.latent_dim
        return self

    def transform(self, X) -> np.ndarray:
        """(n, n_features) -> codes (n, latent_dim), in X's float dtype."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return encode_all(self.model_, self._data(X)).numpy().astype(X.dtype, copy=False)

    @torch.inference_mode()
    def inverse_transform(self, X) -> np.ndarray:
        """Codes (n, latent_dim) -> reconstructed rows (n, n_features) on the original scale."""
        check_is_fitted(self, "model_")
        z = np.asarray(X, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"inverse_transform expects codes of shape (n, {self.latent_dim}), got {z.shape}")
        self.model_.eval()
        out = self.model_.decode(torch.as_tensor(z, device=self.device_)).float()
        # the linear AE with squared error decodes to the image itself; every other model to logits
        image_out = self.model == "linear" and self.model_.cfg.recon == "mse"
        x = (out.clamp(0, 1) if image_out else torch.sigmoid(out)).flatten(1).cpu().numpy()
        return x * self.data_range_ + self.data_min_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags
