"""`aelab index` and `aelab query` through the CLI (`aelab.cli.main` with sys.argv): a faiss index of a
hashing run's codes answers with the true Hamming nearest neighbours and radius counts, and bad input
(codes of another bit width, an image of the wrong size, a run that is not a hashing model, a missing
file) is one line and exit code 2.

    .venv/bin/pytest tests/test_index.py -q
"""
from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
from conftest import require
from PIL import Image

from aelab import runs
from aelab.cli import main
from aelab.data import load_dataset
from aelab.index import hash_images, load_hash_model

require("faiss", extra="index")
FAST = ["data=digits", "train.epochs=2", "train.batch_size=64", "eval.tsne=false", "train.progress=off"]


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["aelab", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


@pytest.fixture(scope="module")
def hash_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return runs.train(overrides=[*FAST, "model=hash-bihalf", "model.latent_dim=16", "model.hidden=(64,)",
                                 f"out_dir={out}", "name=h"])


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def listed(out: str) -> list[tuple[int, int]]:
    """(row, distance) pairs of the printed answer."""
    return [(int(r), int(d)) for r, d in re.findall(r"row\s+(\d+)\s+distance\s+(\d+)", out)]


def test_index_and_query_find_the_hamming_nearest(monkeypatch, capsys, tmp_path, hash_run, digits):
    code, out, err = cli(monkeypatch, capsys, "index", hash_run, "data=digits", f"out={tmp_path / 'ix'}")
    assert code == 0, err
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta["bits"] == 16 and meta["rows"] == len(digits.x_train) and meta["model"] == "hash-bihalf"
    assert meta["labels"] == digits.y_train.tolist()

    Image.fromarray(digits.x_test[0, 0]).save(tmp_path / "q.png")
    code, out, err = cli(monkeypatch, capsys, "query", tmp_path / "ix", tmp_path / "q.png", "k=7",
                         f"out={tmp_path / 'fig.png'}")
    assert code == 0, err
    model = load_hash_model(hash_run)
    db, q = hash_images(model, digits.x_train), hash_images(model, digits.x_test[:1])
    dist = (db != q).sum(1)
    pairs = listed(out)
    assert [d for _, d in pairs] == sorted(dist)[:7]  # the 7 smallest distances, nearest first
    assert all(dist[r] == d for r, d in pairs)  # and each printed row is at its printed distance
    assert (tmp_path / "fig.png").stat().st_size > 0

    np.savez(tmp_path / "q.npz", x=digits.x_test[:3])  # three queries as images in an .npz
    code, out, _ = cli(monkeypatch, capsys, "query", tmp_path / "ix", tmp_path / "q.npz", "k=4", "radius=2")
    assert code == 0 and out.count("query ") >= 3 and len(listed(out)) == 12
    q3 = hash_images(model, digits.x_test[:3])
    counts = [int(n) for n in re.findall(r"(\d+) indexed codes within Hamming radius 2", out)]
    assert counts == [int(((db != b).sum(1) <= 2).sum()) for b in q3]  # multi-index hashing is exact here

    np.savez(tmp_path / "c.npz", codes=q3)  # precomputed codes of the right width
    code, out2, _ = cli(monkeypatch, capsys, "query", tmp_path / "ix", tmp_path / "c.npz", "k=4")
    assert code == 0 and [d for _, d in listed(out2)] == [d for _, d in listed(out)]


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err


def test_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, hash_run, digits):
    assert cli(monkeypatch, capsys, "index", hash_run, "data=digits", f"out={tmp_path / 'ix'}")[0] == 0
    np.savez(tmp_path / "wide.npz", codes=np.zeros((2, 32), bool))
    one_line_error(*cli(monkeypatch, capsys, "query", tmp_path / "ix", tmp_path / "wide.npz")[::2], "32-bit", "16-bit")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "big.png")
    one_line_error(*cli(monkeypatch, capsys, "query", tmp_path / "ix", tmp_path / "big.png")[::2], "28x28", "8x8")
    one_line_error(*cli(monkeypatch, capsys, "query", tmp_path / "ix", tmp_path / "none.png")[::2], "no such")
    one_line_error(*cli(monkeypatch, capsys, "query", tmp_path / "nothing", tmp_path / "big.png")[::2], "not an index")
    one_line_error(*cli(monkeypatch, capsys, "query", tmp_path / "ix", tmp_path / "big.png", "k=x")[::2], "k=")
    dense = runs.train(overrides=[*FAST, "model=dense", f"out_dir={tmp_path}", "name=d"])
    one_line_error(*cli(monkeypatch, capsys, "index", dense, "data=digits")[::2], "not a hashing model")
    one_line_error(*cli(monkeypatch, capsys, "index", tmp_path / "norun", "data=digits")[::2], "not a finished run")
    one_line_error(*cli(monkeypatch, capsys, "index", hash_run)[::2], "data=")
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    (tmp_path / "ix" / "index.json").write_text(json.dumps({**meta, "bits": 32}))  # an index of another width
    one_line_error(*cli(monkeypatch, capsys, "query", tmp_path / "ix", tmp_path / "big.png")[::2], "rebuild")


@pytest.mark.parametrize("n_bits", [16, 32, 64])
def test_radius_counts_are_exact_at_every_radius(tmp_path, n_bits):
    """Multi-index hashing with a fixed number of flips misses codes beyond 3*nhash-1 bits (32 bits,
    radius 6: 203 of 278 found); the counts must equal a brute-force Hamming count at every radius."""
    from aelab.index import within_radius, write_index

    rng = np.random.default_rng(n_bits)
    db = rng.random((3000, n_bits)) < 0.5
    db[:200] = db[0] ^ (rng.random((200, n_bits)) < 0.15)  # a cluster near row 0: small balls are not empty
    write_index(tmp_path / "ix", db, {"model": "test", "data": "random", "run": "", "classes": [],
                                      "labels": [0] * len(db)})
    q = np.concatenate([db[:2], rng.random((2, n_bits)) < 0.5])
    dist = (q[:, None, :] != db[None]).sum(2)  # (Q, N) brute force
    for radius in range(0, n_bits // 2 + 2):
        found = within_radius(tmp_path / "ix", q, radius)
        for i in range(len(q)):
            assert sorted(found[i].tolist()) == np.flatnonzero(dist[i] <= radius).tolist(), (radius, i)


def test_query_codes_as_bits_or_signs_and_nothing_else(monkeypatch, capsys, tmp_path, hash_run, digits):
    assert cli(monkeypatch, capsys, "index", hash_run, "data=digits", f"out={tmp_path / 'ix'}")[0] == 0
    q = hash_images(load_hash_model(hash_run), digits.x_test[:3])
    np.savez(tmp_path / "bits.npz", codes=q.astype(np.uint8))
    np.savez(tmp_path / "signs.npz", codes=np.where(q, 1.0, -1.0).astype(np.float32))  # +-1, as a tanh layer gives
    code, bits_out, err = cli(monkeypatch, capsys, "query", tmp_path / "ix", tmp_path / "bits.npz", "k=5")
    assert code == 0, err
    code, signs_out, err = cli(monkeypatch, capsys, "query", tmp_path / "ix", tmp_path / "signs.npz", "k=5")
    assert code == 0, err
    db = hash_images(load_hash_model(hash_run), digits.x_train)
    want = [sorted((db != b).sum(1))[:5] for b in q]
    assert [d for _, d in listed(signs_out)] == [d for row in want for d in row]  # -1 is a 0 bit, not a 1
    assert listed(signs_out) == listed(bits_out)
    for bad in (np.full((2, 16), 0.5), np.array([[-1, 0, 1] * 5 + [1]]), np.zeros((0, 16)), np.full((2, 16), np.nan)):
        np.savez(tmp_path / "bad.npz", codes=bad)
        code, _, err = cli(monkeypatch, capsys, "query", tmp_path / "ix", tmp_path / "bad.npz")
        one_line_error(code, err, "bad.npz", "codes")
    code, _, err = cli(monkeypatch, capsys, "query", tmp_path / "ix", tmp_path / "bits.npz", "radius=-1")
    one_line_error(code, err, "radius")
