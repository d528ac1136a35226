"""The features study: its pieces (tiles, top-activating selection, near-zero fraction) and a tiny run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from aelab.errors import ConfigError
from aelab.models import build_model
from aelab.studies import run_study
from aelab.studies.features import first_layer_tiles, near_zero_fraction, top_activating


def test_top_activating_picks_the_largest_rows_per_unit():
    codes = np.array([[0.0, 5.0], [3.0, 1.0], [2.0, 4.0], [1.0, 0.0]])
    assert top_activating(codes, 2).tolist() == [[1, 2], [0, 2]]


def test_near_zero_fraction_is_relative_to_the_largest_code():
    codes = np.array([[0.0, 10.0], [0.05, -4.0]])
    assert near_zero_fraction(codes, 0.01) == 0.5  # 0 and 0.05 are < 0.1
    assert near_zero_fraction(codes * 1000, 0.01) == 0.5  # scale-free
    assert near_zero_fraction(np.zeros((3, 2)), 0.01) == 1.0


@pytest.mark.parametrize("name", ["dense", "deep", "tied", "conv"])
def test_first_layer_tiles_shapes(name):
    model = build_model(name, (1, 8, 8))
    cfg = model.cfg  # one tile per first-layer unit: the code for dense, the first hidden layer for deep/tied
    units = cfg.latent_dim if name == "dense" else cfg.channels[0] if name == "conv" else cfg.hidden[0]
    size = 3 if name == "conv" else 8  # conv: the 3x3 kernels; dense layers: whole-image weights
    assert first_layer_tiles(model, (1, 8, 8)).shape == (units, 1, size, size)


def test_unknown_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope"):
        run_study("features", overrides=["workers=1", f"out_dir={tmp_path}", "models=['dense','nope']"])


def test_features_study_end_to_end_on_digits(tmp_path):
    path = run_study("features", overrides=["workers=1", 
        f"out_dir={tmp_path}", "seeds=2", "steps=24", "train.device=cpu",
        "models=['dense','sparse','conv']", "units=4"])
    m = json.loads((path / "metrics.json").read_text())
    for name in ("dense", "sparse", "conv"):
        assert m[name]["near_zero"]["n"] == 2 and 0 <= m[name]["near_zero"]["mean"] <= 1
        assert (path / "figures" / f"weights_{name}.png").exists()
        assert (path / "figures" / f"top_{name}.png").exists()
    assert "verdict" in m["sparse_vs_dense_near_zero"]
    for name in ("dense", "sparse", "conv"):  # every cell stored its curve and status; the summary counts them
        assert sum(m["status"][name].values()) == 2
    cell = json.loads(next((path / "cells").glob("dense.seed0.json")).read_text())
    assert cell["result"]["status"] in ("converged", "still improving")
