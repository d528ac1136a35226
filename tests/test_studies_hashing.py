"""The hashing study and its retrieval maths: packed Hamming distances, metrics with fair ties, Gini,
ITQ, and the study end to end on tiny data. The 10k x 60k timing is opt-in: `pytest -m slow`.

    .venv/bin/pytest tests/test_studies_hashing.py -q
"""
from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest

from aelab.errors import ConfigError
from aelab.retrieval import (evaluate_hash, expected_ap, expected_ap_at, expected_precision_at, gini,
                             hamming, index_buckets, knn, literature_queries, nearest, pack_bits, weighted_gini)
from aelab.studies import run_study
from aelab.studies.hashing_baselines import ITQ, LSH, SpectralHashing


def brute_ap(order: list[int]) -> float:
    hits, total = 0, 0.0
    for i, r in enumerate(order):
        if r:
            hits += 1
            total += hits / (i + 1)
    return total / hits


def all_tie_orders(rel: list[int], tot: list[int]) -> list[list[int]]:
    """Every distinct ranking when each tie block is shuffled (each equally likely)."""
    blocks = [sorted(set(itertools.permutations([1] * r + [0] * (t - r)))) for r, t in zip(rel, tot)]
    return [[x for b in combo for x in b] for combo in itertools.product(*blocks)]


@pytest.mark.parametrize("bits", [7, 32, 64, 70])
def test_hamming_matches_brute_force(bits):
    rng = np.random.default_rng(bits)
    q, db = rng.random((13, bits)) > 0.5, rng.random((50, bits)) > 0.5
    want = (q[:, None, :] != db[None]).sum(-1)
    np.testing.assert_array_equal(hamming(pack_bits(q), pack_bits(db)), want)
    np.testing.assert_array_equal(nearest(q, db, 5), np.argsort(want, axis=1, kind="stable")[:, :5])
    d, i = knn(q, db, 5)  # ties in any order: the distances are the 5 smallest, and belong to the rows
    np.testing.assert_array_equal(d, np.sort(want, axis=1)[:, :5])
    np.testing.assert_array_equal(np.take_along_axis(want, i, axis=1), d)
    assert knn(q, db[:3], 5)[0].shape == (13, 3)  # k capped at the index size


def test_ap_without_ties_is_plain_ap():
    # ranks 1 and 3 relevant: AP = (1/1 + 2/3) / 2
    ap = expected_ap(np.array([[1, 0, 1, 0]]), np.array([[1, 1, 1, 1]]))
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)


@pytest.mark.parametrize("rel,tot", [([1, 0, 2, 1], [2, 1, 3, 2]), ([0, 3, 1], [2, 4, 3]), ([2], [5])])
def test_expected_ap_averages_over_tie_orders(rel, tot):
    want = np.mean([brute_ap(o) for o in all_tie_orders(rel, tot)])
    assert expected_ap(np.array([rel]), np.array([tot]))[0] == pytest.approx(want)


def brute_ap_at(order: list[int], cut: int) -> float:
    """AP@cut as HashNet's evaluation computes it: precision at each hit in the top cut, averaged over
    the hits there; 0 when there are none."""
    hits, total = 0, 0.0
    for i, r in enumerate(order[:cut]):
        if r:
            hits += 1
            total += hits / (i + 1)
    return total / hits if hits else 0.0


CASES = [([1, 0, 2, 1], [2, 1, 3, 2]), ([0, 3, 1], [2, 4, 3]), ([2], [5]), ([0, 0, 1], [1, 2, 3]), ([0, 1], [3, 1])]


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 100])
def test_expected_ap_at_averages_over_tie_orders(cut):
    # every case at once, padded with empty blocks: the rows must not leak into each other
    width = max(len(t) for _, t in CASES)
    rel = np.array([r + [0] * (width - len(r)) for r, _ in CASES])
    tot = np.array([t + [0] * (width - len(t)) for _, t in CASES])
    want = [np.mean([brute_ap_at(o, cut) for o in all_tie_orders(r, t)]) for r, t in CASES]
    np.testing.assert_allclose(expected_ap_at(rel, tot, cut), want, rtol=1e-12, atol=1e-12)
    if cut == 100:  # past the index size: AP@R is the whole-ranking AP (0 where nothing is relevant)
        np.testing.assert_allclose(expected_ap_at(rel, tot, cut), np.nan_to_num(expected_ap(rel, tot)))


def test_literature_queries_take_per_class_items_reproducibly():
    y = np.repeat(np.arange(3), [50, 20, 5])
    q = literature_queries(y, 10, seed=1)
    assert np.bincount(y[q]).tolist() == [10, 10, 5] and len(set(q)) == 25
    np.testing.assert_array_equal(q, literature_queries(y, 10, seed=1))
    assert not np.array_equal(q, literature_queries(y, 10, seed=2))


def test_precision_at_k_with_ties():
    # block of 2 (1 relevant) then a block of 4 (2 relevant); k = 4 takes 2 of the 4 tied items
    rel, tot = np.array([[1, 2]]), np.array([[2, 4]])
    orders = all_tie_orders([1, 2], [2, 4])
    want = np.mean([sum(o[:4]) / 4 for o in orders])
    assert expected_precision_at(rel, tot, 4)[0] == pytest.approx(want) == pytest.approx(0.5)
    assert expected_precision_at(rel, tot, 100)[0] == pytest.approx(3 / 6)  # k capped at the index size
    assert np.isnan(expected_ap(np.array([[0, 0]]), tot)[0])  # no relevant item: AP undefined


def test_gini_on_hand_made_buckets():
    counts = np.array([[4, 0, 0], [1, 1, 0], [0, 0, 0]])
    g = gini(counts)
    assert g[0] == 0 and g[1] == pytest.approx(0.5) and np.isnan(g[2])
    assert weighted_gini(counts) == pytest.approx((4 * 0 + 2 * 0.5) / 6)
    packed = pack_bits(np.array([[0, 1], [0, 1], [1, 1], [1, 1], [1, 1]], bool))
    b = index_buckets(packed, np.array([0, 0, 0, 1, 1]), 2)
    assert b["count"] == 2 and b["max_occupancy"] == 3 and b["gini"] == pytest.approx(3 * (1 - 5 / 9) / 5)


def test_evaluate_hash_on_perfect_codes():
    # every class its own code: mAP 1, pure buckets; a flipped code for class 1 degrades it
    y = np.repeat(np.arange(4), 10)
    codes = np.eye(4, 8, dtype=bool)[y]
    res = evaluate_hash(codes, y, codes, y, k=5, map_at=7)
    assert res["map"] == pytest.approx(1) and res["precision_at_5"] == pytest.approx(1)
    assert res["map_at_7"] == pytest.approx(1)
    assert res["gini_r0"] == 0 and res["index_count"] == 4 and res["empty_r0"] == 0
    assert res["gini_r2"] > 0  # one-hot codes are 2 apart: the radius-2 ball mixes classes
    noisy = codes.copy()
    noisy[y == 1] = codes[0]
    assert evaluate_hash(noisy, y, noisy, y, k=5)["map"] < 1


def test_itq_reduces_quantisation_error_vs_pca_sign():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 20)) @ rng.standard_normal((20, 20))
    itq = ITQ(8, seed=0).fit(x)
    assert itq.quantisation_error(x) < itq.quantisation_error(x, np.eye(8))
    assert itq.transform(x).shape == (500, 8) and LSH(8).fit(x).transform(x).shape == (500, 8)
    with pytest.raises(ConfigError):
        ITQ(30).fit(x)


def test_spectral_hashing_spends_bits_on_the_wide_directions():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4000, 2)) * [4.0, 1.0]  # modes (k / width)^2: 1/16, 4/16, 9/16 on x, 1 on y
    sh = SpectralHashing(3).fit(x)
    assert sh.dim_.tolist() == [0, 0, 0] and sh.freq_.tolist() == [1, 2, 3]
    bits = sh.transform(x)
    wide = (x[:, 0] - x[:, 0].min()) / np.ptp(x[:, 0])
    agree = (bits[:, 0] == (wide < 0.5)).mean()  # sin(pi/2 + pi t) > 0 on one half (PCA's sign is free)
    assert max(agree, 1 - agree) > 0.99  # (PCA tilts the axis a little: a few points near the middle)
    assert abs(bits.mean(0)[0] - 0.5) < 0.03


FAST = ["bits=(8,16)", "tune_bits=8", "hidden=(32,)", "steps=21", "train.batch_size=32", "cnn_steps=7",
        "tune_noise=(1.0,4.0)", "tune_ste=(10.0,)", "tune_gamma=(50.0,)", "tune_sgh=(0.0,)", "cnn_bits=(8,)",
        "train.progress=off"]


def test_hashing_study_end_to_end(tmp_path, blobs_npz):
    path = run_study("hashing", overrides=["workers=1", f"data={blobs_npz}", "seeds=2", f"out_dir={tmp_path}", *FAST])
    m = json.loads((path / "metrics.json").read_text())
    codes = ["semhash", "semhash+rot", "hash-ste", "hash-ste+rot", "hash-bihalf", "hash-bihalf+rot",
             "hash-sgh", "hash-sgh+rot", "itq", "lsh", "sh", "cnn"]
    for proto in ("test", "lit"):
        assert set(m["b8"][proto]) == set(codes)
        for code in codes:
            got = m["b8"][proto][code]
            assert {"map", "map_at_1000", "precision_at_100", "gini_r0", "gini_r2", "index_count"} <= set(got)
            assert got["map"]["n"] == 2 and 0 < got["map"]["mean"] <= 1
    for code in codes:
        assert (path / "figures" / f"neighbours_{code}.png").stat().st_size > 0
    assert 0 <= m["b8"]["test"]["semhash"]["saturation"]["mean"] <= 1 and "saturation" not in m["b8"]["test"]["itq"]
    # 16 bits (not tune_bits) runs only the AE method chosen on validation, and no CNN (cnn_bits)
    tuned = m["tuning"]
    best = tuned["best_ae"].removesuffix("+rot")
    assert set(m["b16"]["test"]) == {best, best + "+rot", "itq", "lsh", "sh"}
    assert tuned["best_ae_val_map"] == max(v for k, v in tuned["val_map"].items() )
    assert tuned["setting"]["semhash"]["noise_std"] in (1.0, 4.0) and len(tuned["val_map"]) == 2 * 5  # (own, rotated) x 5 settings
    # the paired differences are the per-seed differences the summaries came from
    d = m["b8"]["vs_itq"]["test"]["hash-bihalf"]["map"]
    assert d["mean"] == pytest.approx(m["b8"]["test"]["hash-bihalf"]["map"]["mean"] - m["b8"]["test"]["itq"]["map"]["mean"])
    assert m["bar_verdict"]["b8"].startswith(("bar met at 8 bits", "bar missed at 8 bits"))
    assert tuned["best_ae"] in m["bar_verdict"]["b16"]


def test_hashing_rejects_bad_config(tmp_path):
    with pytest.raises(ConfigError):
        run_study("hashing", overrides=["bits=0", f"out_dir={tmp_path}"])


@pytest.mark.slow
def test_ranking_10k_by_60k_takes_seconds():
    rng = np.random.default_rng(0)
    db, q = rng.random((60_000, 32)) > 0.5, rng.random((10_000, 32)) > 0.5
    t0 = time.perf_counter()
    evaluate_hash(q, rng.integers(0, 10, 10_000), db, rng.integers(0, 10, 60_000))
    seconds = time.perf_counter() - t0
    print(f"10k x 60k at 32 bits: {seconds:.1f} s")
    assert seconds < 60
