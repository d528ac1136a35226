"""The format readers on small files in the real formats, and a table of bad inputs with the
message each must give. Run: .venv/bin/pytest tests/test_data_formats.py -q"""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from test_data_writers import (IDX_NAMES, cifar_batch, idx_bytes, write_cifar_folder,
                               write_idx_set, write_png)

from aelab.data import Dataset, load_dataset, sources
from aelab.data.formats import check_dataset, read_idx_images, read_idx_labels
from aelab.errors import DataError


@pytest.fixture(autouse=True)
def no_real_data(tmp_path, monkeypatch):
    """Nothing outside tmp_path is looked at: an empty cache and an empty system folder."""
    monkeypatch.setenv("AELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SYSTEM_DIR", tmp_path / "system")


# --- good files load ------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_set_loads(tmp_path, gz):
    arrays = write_idx_set(tmp_path / "mnist", gz=gz)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (12, 1, 4, 4) and ds.x_train.dtype == np.uint8
    assert np.array_equal(ds.x_train[:, 0], arrays["x_train"])
    assert np.array_equal(ds.y_test, arrays["y_test"]) and ds.y_test.dtype == np.int64
    assert ds.classes == [str(i) for i in range(10)] and ds.source == str(tmp_path / "mnist")


def test_idx_readers_detect_gzip_by_magic_not_name(tmp_path):
    labels = np.array([3, 1, 4], np.uint8)
    (tmp_path / "labels").write_bytes(gzip.compress(idx_bytes(labels)))  # gzip with no .gz
    assert read_idx_labels(tmp_path / "labels").tolist() == [3, 1, 4]
    (tmp_path / "images.gz").write_bytes(idx_bytes(np.ones((2, 3, 5), np.uint8)))  # plain, .gz
    assert read_idx_images(tmp_path / "images.gz").shape == (2, 1, 3, 5)


@pytest.mark.parametrize("py2", [False, True], ids=["pickle.dumps", "python2-cPickle"])
def test_cifar_folder_loads(tmp_path, py2):
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py", n=4, py2=py2)
    for data_dir in (tmp_path, folder):  # the parent, or the folder itself
        ds = load_dataset("cifar10", data_dir=data_dir)
        assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
        assert ds.classes[0] == "airplane" and len(ds.classes) == 10
    row = pickle.loads(cifar_batch(4, seed=0))[b"data"][1]  # batch 1, image 1: R plane first
    assert np.array_equal(ds.x_train[1, 0].ravel(), row[:1024])
    assert np.array_equal(ds.x_train[1, 2].ravel(), row[2048:])


@pytest.mark.parametrize("shape, expect", [
    ((5, 6, 6), (1, 6, 6)),  # N, H, W
    ((5, 6, 6, 3), (3, 6, 6)),  # N, H, W, C
    ((5, 1, 6, 6), (1, 6, 6)),  # N, C, H, W
    ((5, 3, 4, 4), (3, 4, 4)),  # ambiguous: the square reading wins
])
def test_npz_layouts(tmp_path, shape, expect):
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(5) % 2, x_test=x, y_test=np.zeros(5, int))
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert ds.shape == expect and ds.classes == ["0", "1"]
    if len(shape) == 4 and shape[-1] == 3:
        assert np.array_equal(ds.x_train, x.transpose(0, 3, 1, 2))


def test_npz_float_images_labels_column_and_class_names(tmp_path):
    x = np.array([0.0, 0.5, 1.0, 0.2], np.float32).reshape(1, 2, 2).repeat(4, 0)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([[0], [1], [0], [1]]), x_test=x[:2],
             y_test=np.array([1, 0], np.uint8), classes=np.array(["cat", "dog"]))
    ds = load_dataset("npz:d.npz", data_dir=tmp_path)  # a relative path found under data_dir
    assert ds.x_train[0, 0].ravel().tolist() == [0, 128, 255, 51]
    assert ds.y_train.tolist() == [0, 1, 0, 1] and ds.classes == ["cat", "dog"]


def test_image_folder_auto_split_is_stratified_and_seeded(tmp_path):
    for cls in ("b_dog", "a_cat"):
        for i in range(10):
            write_png(tmp_path / "imgs" / cls / f"{i}.png", value=i)
    ds = load_dataset(f"folder:{tmp_path / 'imgs'}")
    assert ds.classes == ["a_cat", "b_dog"] and ds.shape == (1, 4, 4)
    assert np.bincount(ds.y_train).tolist() == [8, 8] and np.bincount(ds.y_test).tolist() == [2, 2]
    again = load_dataset(f"folder:{tmp_path / 'imgs'}")
    assert np.array_equal(ds.x_test, again.x_test) and np.array_equal(ds.y_test, again.y_test)


def test_image_folder_train_test_and_colour(tmp_path):
    write_png(tmp_path / "train" / "cat" / "0.png", mode="RGB", value=10)
    write_png(tmp_path / "train" / "dog" / "0.png", mode="L", value=99)
    write_png(tmp_path / "test" / "dog" / "0.jpg", mode="RGB", value=10)
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.classes == ["cat", "dog"] and ds.shape == (3, 4, 4)  # one colour file: all RGB
    assert ds.y_train.tolist() == [0, 1] and ds.y_test.tolist() == [1]
    assert (ds.x_train[1] == 99).all()  # the grey image, repeated over 3 channels


# --- bad inputs: each must give a DataError with this fragment ------------------------------------


def _malicious_pickle(marker: Path) -> bytes:
    class Boom:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    return pickle.dumps({b"data": Boom(), b"labels": [0]})


def _npz(tmp_path, drop: str = "", **over) -> tuple[str, Path]:
    x = np.zeros((4, 3, 3), np.uint8)
    arrays = dict(x_train=x, y_train=np.arange(4) % 2, x_test=x, y_test=np.arange(4) % 2) | over
    arrays.pop(drop, None)
    np.savez(tmp_path / "d.npz", **arrays)
    return "npz:d.npz", tmp_path


def _idx(tmp_path, name: str, raw: bytes, gz: bool = False) -> tuple[str, Path]:
    write_idx_set(tmp_path, gz=False)
    (tmp_path / name).write_bytes(gzip.compress(raw) if gz else raw)
    return "mnist", tmp_path


def _cifar(tmp_path, batch: bytes) -> tuple[str, Path]:
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py")
    (folder / "data_batch_3").write_bytes(batch)
    return "cifar10", folder


def _folder(tmp_path, *files: tuple[str, tuple[int, int]]) -> tuple[str, Path]:
    for name, size in files:
        write_png(tmp_path / "imgs" / name, size=size)
    return "folder:imgs", tmp_path


def _garbage_png(tmp_path) -> tuple[str, Path]:
    write_png(tmp_path / "imgs" / "a" / "0.png")
    (tmp_path / "imgs" / "a" / "1.png").write_bytes(b"\x89PNG not really")
    return "folder:imgs", tmp_path


def _truncated_gzip(tmp_path):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / (IDX_NAMES[0] + ".gz")
    path.write_bytes(path.read_bytes()[:40])
    return "mnist", tmp_path


BAD = {
    "missing file": (lambda t: ("npz:nope.npz", t), "nope.npz: not found (looked for"),
    "unknown name": (lambda t: ("imagenet", t), "unknown data set 'imagenet'; valid: digits"),
    "nothing found": (lambda t: ("mnist", t), "data.download=true"),
    "truncated gzip": (_truncated_gzip, "truncated or corrupt gzip"),
    "wrong IDX magic": (lambda t: _idx(t, IDX_NAMES[0], idx_bytes(np.zeros((2, 2)), magic=0x801)),
                        "not an IDX images file (magic number 0x00000801"),
    "truncated IDX": (lambda t: _idx(t, IDX_NAMES[0], idx_bytes(np.zeros((12, 4, 4)))[:-1]),
                      "IDX file truncated"),
    "count mismatch": (lambda t: _idx(t, IDX_NAMES[1], idx_bytes(np.zeros(11)), gz=True),
                       "train set has 12 images but 11 labels"),
    "labels out of range": (lambda t: _idx(t, IDX_NAMES[3], idx_bytes(np.full(6, 10))),
                            "test labels must be in [0, 10)"),
    "empty set": (lambda t: _npz(t, x_test=np.zeros((0, 3, 3), np.uint8), y_test=np.zeros(0, int)),
                  "test set is empty"),
    "npz NaN": (lambda t: _npz(t, x_train=np.full((4, 3, 3), np.nan)), "NaN or Inf"),
    "npz out of range": (lambda t: _npz(t, x_train=np.full((4, 3, 3), 1.5)), "must be in [0, 1]"),
    "npz negative label": (lambda t: _npz(t, y_test=np.array([0, 1, -1, 0])), "labels must be >= 0"),
    "npz float labels": (lambda t: _npz(t, y_test=np.zeros(4)), "labels must be a 1-D integer"),
    "npz object array": (lambda t: _npz(t, y_test=np.array([0, 1, None, 2], dtype=object)),
                         "object arrays"),
    "npz missing key": (lambda t: _npz(t, drop="y_test"), "missing y_test"),
    "mixed sizes": (lambda t: _folder(t, ("a/0.png", (4, 4)), ("a/1.png", (5, 4))),
                    "0.png is 4x4 but"),
    "unreadable image": (_garbage_png, "1.png: cannot read the image"),
    "folder missing": (lambda t: ("folder:nope", t), "nope: not found"),
    "cifar data shape": (lambda t: _cifar(t, pickle.dumps({b"data": np.zeros((2, 10), np.uint8),
                                                           b"labels": [0, 1]})), "b'data' must be"),
    "cifar label range": (lambda t: _cifar(t, pickle.dumps({b"data": np.zeros((1, 3072), np.uint8),
                                                            b"labels": [10]})), "in [0, 10)"),
    "cifar garbage": (lambda t: _cifar(t, b"\x80\x04garbage"), "not a valid CIFAR-10 pickle"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_gives_data_error(tmp_path, case):
    build, fragment = BAD[case]
    name, data_dir = build(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset(name, data_dir=data_dir)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)  # one line, as the CLI prints it


def test_mixed_sizes_names_both_files(tmp_path):
    name, data_dir = _folder(tmp_path, ("a/0.png", (4, 4)), ("b/1.png", (6, 5)))
    with pytest.raises(DataError, match=r"a/0\.png is 4x4 but .*b/1\.png is 6x5"):
        load_dataset(name, data_dir=data_dir)


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    name, folder = _cifar(tmp_path, _malicious_pickle(marker))
    with pytest.raises(DataError, match=r"data_batch_3: refusing to unpickle (posix|os|nt)\.system"):
        load_dataset(name, data_dir=folder)
    assert not marker.exists()


def test_check_dataset_rejects_wrong_dtypes_and_shapes():
    x, y = np.zeros((2, 1, 3, 3), np.uint8), np.zeros(2, np.int64)
    check_dataset(Dataset("ok", x, y, x, y, classes=["a"]))
    with pytest.raises(DataError, match="train images must be uint8"):
        check_dataset(Dataset("f", x.astype(np.float32), y, x, y, classes=["a"]))
    with pytest.raises(DataError, match="test labels must be int64"):
        check_dataset(Dataset("i", x, y, x, y.astype(np.int32), classes=["a"]))
    with pytest.raises(DataError, match="but test images are"):
        check_dataset(Dataset("s", x, y, np.zeros((2, 1, 4, 4), np.uint8), y, classes=["a"]))
    with pytest.raises(DataError, match="no classes"):
        check_dataset(Dataset("c", x, y, x, y))
