"""The generation study: the Fréchet distance, the fitted-Gaussian sampler, and the study end to end
on tiny data (metrics.json keys, sample grids, interpolation strip and GIF, attributes, traversals).

    .venv/bin/pytest tests/test_studies_generation.py -q
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from aelab.errors import ConfigError
from aelab.studies import run_study
from aelab.studies.generation import GaussianCodes, frechet, moments


def gaussian_feats(n: int, shift: float, seed: int) -> torch.Tensor:
    mix = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))  # correlated features, same for all
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed + 1)) @ mix + shift


def test_frechet_of_a_distribution_with_itself_is_zero_and_grows_with_shift():
    ref = moments(gaussian_feats(4000, 0.0, 0))
    assert frechet(*ref, *ref) == pytest.approx(0.0, abs=1e-6)
    same = frechet(*moments(gaussian_feats(4000, 0.0, 10)), *ref)  # a fresh sample: only sampling noise
    shifts = [frechet(*moments(gaussian_feats(4000, s, 10)), *ref) for s in (0.5, 1.0, 2.0)]
    assert same < shifts[0] < shifts[1] < shifts[2]
    assert shifts[2] == pytest.approx(8 * 2.0 ** 2, rel=0.2)  # |mu1 - mu2|^2 dominates: 8 dims x 2^2


def test_frechet_of_gaussians_in_closed_form():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet(np.array([1.0]), np.array([[4.0]]), np.array([0.0]), np.array([[1.0]])) == pytest.approx(2.0)


def test_gaussian_codes_match_the_fitted_moments():
    codes = gaussian_feats(5000, 3.0, 0)
    draws = GaussianCodes(codes).sample(20000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(draws.mean(0), codes.mean(0), atol=0.15, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), torch.cov(codes.T), atol=0.5, rtol=0.1)


FIGURES = ["samples_vae.png", "samples_ae_gauss.png", "real_test.png", "interpolation_vae.png",
           "interpolation_vae.gif", "interpolation_ae.png", "interpolation_ae.gif", "attribute_class_vae.png",
           "attribute_ink_vae.png", "attribute_class_ae.png", "traversal_vae.png", "traversal_ae.png"]


def test_generation_study_end_to_end(tmp_path):
    path = run_study("generation", overrides=[
        "data=digits", "seeds=2", "workers=1", "vae_steps=56", "cnn_steps=56", "feat_dim=16", "latent_dim=4",
        "steps=5", "train.progress=off", "train.batch_size=64", f"out_dir={tmp_path}"])
    m = json.loads((path / "metrics.json").read_text())
    for group in ("fd", "confidence", "class_coverage"):
        assert set(m[group]) == {"vae", "ae_gauss", "real_test"} and m[group]["vae"]["n"] == 2
    assert set(m["attribute_transfer"]) == {"vae", "ae"} and "classifier_test_acc" in m
    # the floor: held-out real images are nearer the training images than 2-epoch samples
    assert m["fd"]["real_test"]["mean"] < min(m["fd"]["vae"]["mean"], m["fd"]["ae_gauss"]["mean"])
    assert "paired seeds" in m["verdict"] and m["setup"]["attribute"] == "1 - 0"
    assert {a: sum(c.values()) for a, c in m["status"].items()} == {"vae": 2, "ae": 2, "classifier": 2}
    for name in FIGURES:
        assert (path / "figures" / name).stat().st_size > 0, name
    with Image.open(path / "figures" / "interpolation_vae.gif") as gif:
        # PIL merges identical consecutive frames (2-epoch decodings barely move): animated is enough
        assert gif.is_animated and gif.n_frames >= 2


def test_generation_rejects_bad_config(tmp_path):
    with pytest.raises(ConfigError):
        run_study("generation", overrides=["attribute=('Sneaker',)", f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="not in the data set"):
        run_study("generation", overrides=["data=digits", "seeds=1", "vae_steps=14", "cnn_steps=14",
                                           "attribute=('Sneaker','Ankle boot')", "train.progress=off",
                                           f"out_dir={tmp_path}"])
