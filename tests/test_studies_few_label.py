"""The few-label study and its classifier helper: subset sizes, the three routes, a tiny end-to-end run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aelab.classify import Classifier, accuracy, train_classifier
from aelab.config import TrainConfig
from aelab.engine import fit
from aelab.errors import ConfigError
from aelab.models import build_model
from aelab.studies import run_study
from aelab.studies.few_label import FewLabelConfig, budgets, labelled_rows


def test_labelled_subset_sizes_are_class_balanced():
    y = np.repeat(np.arange(4), 50)
    rows = labelled_rows(y, 10, 0.0, seed=0)
    assert len(rows) == 40 and np.bincount(y[rows]).tolist() == [10] * 4
    assert len(labelled_rows(y, 0, 0.1, seed=0)) == 20
    assert len(labelled_rows(y, 0, 1.0, seed=0)) == 200
    assert set(labelled_rows(y, 10, 0.0, seed=0)) != set(labelled_rows(y, 10, 0.0, seed=1))


def test_budgets_skip_what_a_class_cannot_give():
    cfg = FewLabelConfig(labels_per_class=(5, 100), fractions=(0.5,))
    assert budgets(cfg, np.repeat(np.arange(3), 20)) == [("k5", 5, 0.0), ("p50", 0, 0.5)]


def test_classifier_routes_train_what_they_should(blob_splits):
    torch.manual_seed(0)
    ae = build_model("dense", (1, 8, 8))
    fit(ae, blob_splits.train, TrainConfig(epochs=10, progress="off"))  # pretrained, labels unused
    before = ae.encoder[1].weight.clone()
    cfg = TrainConfig(epochs=30, lr=1e-2, progress="off")
    probe = train_classifier(ae, blob_splits.train, "probe", cfg, num_classes=4, seed=0)
    tuned = train_classifier(ae, blob_splits.train, "finetune", cfg, num_classes=4, seed=0)
    scratch = train_classifier(ae, blob_splits.train, "scratch", cfg, num_classes=4, seed=0)
    assert torch.equal(probe.ae.encoder[1].weight, before)  # frozen
    assert not torch.equal(tuned.ae.encoder[1].weight, before)  # fine-tuned
    assert torch.equal(ae.encoder[1].weight, before)  # the pretrained AE itself is never changed
    assert not torch.equal(scratch.ae.encoder[1].weight, before)  # a fresh init
    for clf in (probe, tuned, scratch):
        assert accuracy(clf, blob_splits.test) > 0.9  # the blobs are easy: well above chance (0.25)


def test_hidden_labels_take_no_part_in_the_loss():
    clf = Classifier(build_model("dense", (1, 8, 8)), 3, "finetune")
    x = torch.rand(4, 1, 8, 8)
    out = clf({"x": x, "x_in": x, "y": torch.tensor([0, -1, -1, 2])})
    ref = clf({"x": x[[0, 3]], "x_in": x[[0, 3]], "y": torch.tensor([0, 2])})
    assert torch.allclose(out["loss"], ref["loss"]) and torch.allclose(out["acc"], ref["acc"])


def test_bad_mode_and_bad_budget_are_config_errors(tmp_path):
    with pytest.raises(ConfigError):
        Classifier(build_model("dense", (1, 8, 8)), 3, "nope")
    with pytest.raises(ConfigError):
        run_study("few-label", overrides=["workers=1", f"out_dir={tmp_path}", "fractions=[1.5]"])


def test_few_label_study_end_to_end_on_digits(tmp_path):
    path = run_study("few-label", overrides=["workers=1", 
        f"out_dir={tmp_path}", "seeds=2", "steps=24", "train.device=cpu",
        "labels_per_class=[5, 1000]", "fractions=[0.1, 1.0]", "clf_steps=20"])
    m = json.loads((path / "metrics.json").read_text())
    assert m["skipped_budgets"] == ["k1000"] and m["k5"]["n_labels"] == 50
    for budget in ("k5", "p10", "p100"):
        for route in ("probe", "finetune", "scratch", "logreg_pixels", "logreg_pca"):
            assert m[budget][route]["n"] == 2
    assert m["p100"]["logreg_pixels"]["mean"] > 0.9  # digits: logistic regression on all labels
    assert "answer" in m["q8"]
    fewest = m["fewest_labels"]  # "<route> vs logistic regression ...: <verdict word>", read off the interval
    assert fewest["verdict"].startswith(f"{fewest['best_route']} vs logistic regression on pixels with 50 labels: ")
    word = fewest["verdict"].split(" [")[0].rsplit(": ", 1)[1]
    assert word in ("better", "worse", "no measurable difference")
    # statuses: every training cell counted; a verdict carries a caveat exactly when an arm it names did not converge
    assert sum(m["status"]["pretrain"].values()) == 2 and sum(m["status"]["probe"].values()) == 6
    bad = [a for a in ("pretrain", fewest["best_route"]) if set(m["status"][a]) - {"converged"}]
    assert ("[" in fewest["verdict"]) == bool(bad)
    assert (path / "figures" / "accuracy_vs_labels.png").exists()
