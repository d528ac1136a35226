"""Writers of small files in the real data formats, shared by the tests/test_data_*.py files.

The tests here check the writers themselves against the formats' specs (IDX header layout, the
opcodes Python 2's cPickle used for the real CIFAR-10 batches), so the reader tests prove something.
"""
from __future__ import annotations

import gzip
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
from PIL import Image

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_CLASSES = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
                 b"dog", b"frog", b"horse", b"ship", b"truck"]


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file: big-endian magic (0x0000 08 ndim for unsigned bytes), dims, then the data."""
    magic = 0x0800 | arr.ndim if magic is None else magic
    dims = struct.pack(f">{arr.ndim}I", *arr.shape)
    return struct.pack(">I", magic) + dims + arr.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int = 12, n_test: int = 6, gz: bool = True,
                  side: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """The four MNIST files in `folder`; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {"x_train": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
              "y_train": np.arange(n_train) % 10, "x_test": rng.integers(0, 256, (n_test, side, side),
                                                                        dtype=np.uint8),
              "y_test": np.arange(n_test) % 10}
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(IDX_NAMES, arrays.values()):
        raw = idx_bytes(arr)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


def _enc(obj: object) -> bytes:
    """One object in protocol-2 opcodes as Python 2's cPickle wrote them (str -> BINSTRING)."""
    if isinstance(obj, bytes):
        head = b"U" + bytes([len(obj)]) if len(obj) < 256 else b"T" + struct.pack("<i", len(obj))
        return head + obj
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if obj is None:
        return b"N"
    if isinstance(obj, tuple):
        return b"(" + b"".join(map(_enc, obj)) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(map(_enc, obj)) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_enc(k) + _enc(v) for k, v in obj.items()) + b"u"
    assert isinstance(obj, np.ndarray) and obj.dtype == np.uint8
    dtype = (b"cnumpy\ndtype\n(" + _enc(b"u1") + b"\x89\x88tR"
             + _enc((3, b"|", None, None, None, -1, -1, 0)) + b"b")
    array = b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n" + _enc((0,)) + _enc(b"b") + b"tR"
    state = b"(" + _enc(1) + _enc(obj.shape) + dtype + _enc(False) + _enc(obj.tobytes()) + b"t"
    return array + state + b"b"


def py2_pickle(obj: object) -> bytes:
    """`obj` pickled the way the real CIFAR-10 batches were (Python 2, numpy 1.x, protocol 2)."""
    return b"\x80\x02" + _enc(obj) + b"."


def cifar_batch(n: int, seed: int = 0, py2: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [i % 10 for i in range(n)],
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [b"img_%d.png" % i for i in range(n)]}
    return py2_pickle(batch) if py2 else pickle.dumps(batch)


def write_cifar_folder(folder: Path, n: int = 4, py2: bool = False) -> Path:
    """A cifar-10-batches-py folder with n images per batch; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(cifar_batch(n, seed=i, py2=py2))
    meta = {b"label_names": CIFAR_CLASSES, b"num_cases_per_batch": n, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta) if py2 else pickle.dumps(meta))
    return folder


def write_png(path: Path, size: tuple[int, int] = (4, 4), mode: str = "L", value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 255 - value, 7)).save(path)


def test_idx_header_layout():
    raw = idx_bytes(np.zeros((2, 3, 5), np.uint8))
    assert raw[:4] == b"\x00\x00\x08\x03" and struct.unpack(">3I", raw[4:16]) == (2, 3, 5)
    assert len(raw) == 16 + 30


def test_py2_pickle_uses_python2_opcodes_and_numpy_core():
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(cifar_batch(2, py2=True))]
    assert ("GLOBAL", "numpy.core.multiarray _reconstruct") in ops
    assert "SHORT_BINBYTES" not in {name for name, _ in ops}  # py2 had no bytes type
    assert ("SHORT_BINSTRING", "data") in ops
