"""The binary-code autoencoders (semhash, hash-ste, hash-bihalf, hash-sgh): each trained on digits
hashes held-out digits far better than LSH at the same 16 bits, and each method's own mechanism does
what it says (bi-half splits every bit half/half, the STE terms vanish only for balanced,
uncorrelated bits, SGH samples while training and is deterministic in evaluation).

    .venv/bin/pytest tests/test_models_hashing.py -q
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aelab.config import TrainConfig
from aelab.data import load_dataset
from aelab.data.device import to_device
from aelab.engine import fit
from aelab.models import build_model, get_model_class
from aelab.models.hash_bihalf import half_split
from aelab.models.hash_ste import balance_term, decorrelation_term
from aelab.retrieval import evaluate_hash
from aelab.studies.hashing_baselines import LSH

METHODS = {"semhash": {"noise_std": 4.0}, "hash-ste": {}, "hash-bihalf": {}, "hash-sgh": {"balance": 10.0}}


@pytest.fixture(scope="module")
def digits():
    return to_device(load_dataset("digits"), "cpu", 0.0, 0)


def bits_of(model, data) -> np.ndarray:
    return model.hash_bits(data.x.float().div(255)).numpy()


@pytest.mark.parametrize("name", list(METHODS))
def test_method_beats_lsh_on_held_out_digits(name, digits):
    torch.manual_seed(0)
    cfg = get_model_class(name).Config(name=name, latent_dim=16, hidden=(128,), **METHODS[name])
    model = build_model(cfg, digits.train.x.shape[1:])
    fit(model, digits.train, TrainConfig(epochs=30, batch_size=64, progress="off"), seed=0)
    model.eval()
    y_tr, y_te = digits.train.y.numpy(), digits.test.y.numpy()
    got = evaluate_hash(bits_of(model, digits.test), y_te, bits_of(model, digits.train), y_tr)["map"]
    x_tr, x_te = (d.x.float().div(255).flatten(1).numpy() for d in (digits.train, digits.test))
    lsh = LSH(16, seed=0).fit(x_tr)
    floor = evaluate_hash(lsh.transform(x_te), y_te, lsh.transform(x_tr), y_tr)["map"]  # ~0.32
    assert got > floor + 0.15, f"{name}: mAP {got:.3f} vs LSH {floor:.3f}"


def test_bihalf_splits_every_bit_half_half():
    a = torch.randn(10, 5) + torch.arange(5) * 3.0  # columns far from zero: sign() would be all ones
    b = half_split(a)
    assert b.sum(0).tolist() == [5.0] * 5
    assert torch.equal(b.bool(), a > a.sort(0).values[4])  # the top half of each column is 1
    assert half_split(torch.randn(7, 3)).sum(0).tolist() == [3.0] * 3  # odd batch: floor(B/2) ones


def test_bihalf_training_code_is_balanced_in_train_mode_and_sign_in_eval():
    torch.manual_seed(0)
    model = build_model("hash-bihalf", (1, 8, 8))
    a = torch.randn(16, model.cfg.latent_dim) + 2.0
    z, terms = model.code(a)
    assert z.sum(0).tolist() == [8.0] * model.cfg.latent_dim and terms["pull"] > 0
    model.eval()
    z, terms = model.code(a)
    assert torch.equal(z.bool(), a > 0) and not terms


def test_ste_terms_vanish_only_for_balanced_uncorrelated_bits():
    h = torch.tensor([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=torch.float32)  # balanced, orthogonal
    assert balance_term(h) == 0 and decorrelation_term(h) == 0
    same = torch.tensor([[1, 1], [1, 1], [-1, -1], [-1, -1]], dtype=torch.float32)  # two copies of one bit
    assert balance_term(same) == 0 and decorrelation_term(same) == pytest.approx(1.0)
    lopsided = torch.ones(4, 2)
    assert balance_term(lopsided) == pytest.approx(1.0)


def test_sgh_samples_in_training_and_is_deterministic_in_eval():
    torch.manual_seed(0)
    model = build_model("hash-sgh", (1, 8, 8))
    a = torch.zeros(2000, model.cfg.latent_dim)  # p = 1/2: each draw a fair coin
    z, _ = model.code(a)
    assert set(z.unique().tolist()) == {0.0, 1.0} and abs(z.mean().item() - 0.5) < 0.02
    model.eval()
    assert torch.equal(model.code(a + 0.1)[0], torch.ones_like(a))
