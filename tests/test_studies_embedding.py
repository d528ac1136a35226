"""The embedding study: its metric pieces, the linear-AE = PCA check, and one tiny end-to-end run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from aelab.errors import ConfigError
from aelab.studies import run_study
from aelab.studies.embedding import knn_accuracy, score_2d


def test_knn_accuracy_separates_clusters_from_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    clustered = np.eye(3)[labels][:, :2] * 10 + rng.normal(0, 0.1, (90, 2))
    assert knn_accuracy(clustered, labels, 5) == 1.0
    shuffled = rng.normal(0, 1, (90, 2))
    assert knn_accuracy(shuffled, labels, 5) < 0.7


def test_score_2d_trustworthiness_of_a_faithful_and_a_scrambled_map():
    rng = np.random.default_rng(1)
    pixels = rng.normal(size=(80, 2))
    labels = (pixels[:, 0] > 0).astype(int)
    good = score_2d(pixels * 3.0, np.hstack([pixels, np.zeros((80, 3))]), labels)
    bad = score_2d(rng.permutation(pixels), np.hstack([pixels, np.zeros((80, 3))]), labels)
    assert good["trust"] > 0.99 and bad["trust"] < 0.8
    assert good["knn1"] > bad["knn1"]


def test_bad_perplexity_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        run_study("embedding", overrides=["workers=1", f"out_dir={tmp_path}", "points=30", "perplexity=20"])


def test_embedding_study_end_to_end_on_digits(tmp_path):
    path = run_study("embedding", overrides=["workers=1", 
        f"out_dir={tmp_path}", "seeds=2", "steps=24", "points=150", "perplexity=10",
        "linear_steps=480", "train.device=cpu"])
    m = json.loads((path / "metrics.json").read_text())
    for route in ("pca_pixels", "tsne_pixels", "ae_tsne", "ae_2d"):
        assert set(m[route]) == {"knn1", "knn5", "trust"} and m[route]["knn5"]["n"] == 2
        assert (path / "figures" / f"scatter_{route}.png").exists()
    # t-SNE on digit pixels separates the classes far better than chance (0.1)
    assert m["tsne_pixels"]["knn5"]["mean"] > 0.6
    # seed 002: a linear AE reconstructs about as well as PCA with as many components
    assert 0.9 < m["linear_vs_pca"]["ratio"]["mean"] < 1.25
    assert m["best_ae_route"] == "ae_tsne" and "bar" in m and (path / "report.html").exists()
    # the three training arms stored a curve and a status per seed; the pixels arm trains nothing
    assert {a: sum(c.values()) for a, c in m["status"].items()} == {"ae": 2, "ae_2d": 2, "linear": 2}
