"""AutoencoderTransformer: scikit-learn's own estimator checks, a Pipeline, shapes and round trips."""
from __future__ import annotations

import numpy as np
import pytest

from aelab.errors import ConfigError

# scikit-learn (and aelab.estimator, built on it) are imported by the tests, not at collection: collection
# runs in every test worker, and only one of them runs this file.

# Checks we expect to skip, and why: array-API input needs SCIPY_ARRAY_API=1 and torch-free input paths.
SKIPPED_OK = {"check_array_api_input"}


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_passes_scikit_learns_check_estimator(kind):
    from sklearn.utils.estimator_checks import check_estimator

    from aelab.estimator import AutoencoderTransformer

    est = AutoencoderTransformer("dense", latent_dim=3, epochs=2, batch_size=16, random_state=0) if kind == "dense" \
        else AutoencoderTransformer("conv", latent_dim=3, epochs=1, batch_size=16, random_state=0,
                                    model_params={"channels": (4,)})
    results = check_estimator(est, on_fail=None, on_skip=None)
    bad = [(r["check_name"], r["status"], str(r["exception"])[:200]) for r in results
           if r["status"] == "failed" or (r["status"] == "skipped" and r["check_name"] not in SKIPPED_OK)]
    assert not bad
    assert len(results) > 30  # the checks really ran


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x / 16.0, y


def test_pipeline_before_a_classifier_learns_digits():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from aelab.estimator import AutoencoderTransformer

    x, y = _digits()
    pipe = make_pipeline(AutoencoderTransformer("dense", latent_dim=16, epochs=15, random_state=0),
                         LogisticRegression(max_iter=500))
    pipe.fit(x[:1200], y[:1200])
    assert pipe.score(x[1200:], y[1200:]) > 0.8  # chance is 0.1


def test_shapes_round_trip_and_fitted_attributes():
    from sklearn.base import clone

    from aelab.estimator import AutoencoderTransformer

    x, _ = _digits()
    est = AutoencoderTransformer("dense", latent_dim=8, epochs=40, batch_size=32, random_state=0)
    assert est.fit(x[:500]) is est
    assert est.image_shape_ == (1, 8, 8) and est.n_features_in_ == 64
    z = est.transform(x[500:600])
    assert z.shape == (100, 8) and z.dtype == np.float64
    recon = est.inverse_transform(z)
    assert recon.shape == (100, 64)
    err = np.mean((recon - x[500:600]) ** 2)
    assert err < np.mean((x[:500].mean(0) - x[500:600]) ** 2)  # better than predicting the mean image
    assert list(est.get_feature_names_out())[:2] == ["autoencodertransformer0", "autoencodertransformer1"]
    c = clone(AutoencoderTransformer("sparse", model_params={"weight": 0.1}))
    assert c.get_params()["model_params"] == {"weight": 0.1}


def test_same_random_state_same_codes_and_non_square_shapes():
    from aelab.estimator import AutoencoderTransformer

    x = np.random.default_rng(0).random((40, 10))  # 10 features: not a square, a 1 x 1 x 10 "image"
    a = AutoencoderTransformer("dense", latent_dim=2, epochs=2, random_state=3).fit(x)
    b = AutoencoderTransformer("dense", latent_dim=2, epochs=2, random_state=3).fit(x)
    assert a.image_shape_ == (1, 1, 10) and np.array_equal(a.transform(x), b.transform(x))


def test_bad_parameters_raise_clear_errors():
    from aelab.estimator import AutoencoderTransformer

    x = np.random.default_rng(0).random((20, 16))
    with pytest.raises(ValueError, match="image_shape"):
        AutoencoderTransformer("dense", image_shape=(1, 3, 3)).fit(x)
    with pytest.raises(ValueError, match="> 0"):
        AutoencoderTransformer("dense", latent_dim=0).fit(x)
    with pytest.raises(ConfigError, match="unknown model"):
        AutoencoderTransformer("nope").fit(x)
    with pytest.raises(ConfigError):
        AutoencoderTransformer("dense", model_params={"nope": 1}).fit(x)
