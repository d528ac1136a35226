"""Fuzz the IDX, npz and CIFAR readers: any bytes give a valid data set or a DataError, never any
other exception. Run: .venv/bin/pytest tests/test_data_fuzz.py -q"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_data_writers import IDX_NAMES, cifar_batch, idx_bytes, write_cifar_folder, write_idx_set

from aelab.data import Dataset, load_dataset, sources
from aelab.data.formats import check_dataset
from aelab.errors import DataError

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One folder per module: hypothesis runs many examples in one test call, so no tmp_path."""
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(autouse=True)
def no_real_data(work, monkeypatch):
    monkeypatch.setenv("AELAB_CACHE", str(work / "cache"))
    monkeypatch.setattr(sources, "SYSTEM_DIR", work / "system")


def _valid_or_data_error(name: str, data_dir: Path) -> None:
    try:
        ds = load_dataset(name, data_dir=data_dir)
    except DataError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(ds, Dataset) and check_dataset(ds) is ds


def _mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """`valid` cut short, with a slice overwritten, or with bytes inserted."""
    cut = st.integers(0, len(valid)).map(lambda i: valid[:i])
    at = st.integers(0, len(valid))
    patch = st.tuples(at, st.binary(min_size=1, max_size=8)).map(
        lambda p: valid[:p[0]] + p[1] + valid[p[0] + len(p[1]):])
    insert = st.tuples(at, st.binary(min_size=1, max_size=8)).map(
        lambda p: valid[:p[0]] + p[1] + valid[p[0]:])
    return st.one_of(cut, patch, insert)


@st.composite
def idx_files(draw) -> bytes:
    """IDX-shaped bytes: a plausible header and a body of about (or not) the right length."""
    magic = draw(st.one_of(st.sampled_from([0x801, 0x803, 0x802, 0x0D03]), st.integers(0, 2**32 - 1)))
    dims = draw(st.lists(st.integers(0, 6), min_size=0, max_size=4))
    size = int(np.prod(dims)) + draw(st.integers(-3, 3)) if dims else draw(st.integers(0, 10))
    raw = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    return raw + draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))


VALID_IDX = idx_bytes(np.arange(12 * 16).reshape(12, 4, 4) % 256)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), idx_files(), _mutations(VALID_IDX)),
       gz=st.booleans(), which=st.sampled_from(IDX_NAMES))
def test_fuzz_idx(work, raw, gz, which):
    folder = work / "idx"
    write_idx_set(folder, gz=False)  # the other three files valid
    (folder / which).write_bytes(gzip.compress(raw) if gz else raw)
    _valid_or_data_error("mnist", folder)


@FUZZ
@given(raw=_mutations(gzip.compress(VALID_IDX)))
def test_fuzz_gzip_container(work, raw):
    folder = work / "gz"
    write_idx_set(folder, gz=False)
    (folder / IDX_NAMES[0]).write_bytes(raw)
    _valid_or_data_error("mnist", folder)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


ANY_DTYPE = st.sampled_from(["u1", "i8", "f4", "f8", "?", "u8", "i1", "c8", "U3"])
ANY_ARRAY = hnp.arrays(ANY_DTYPE, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4))
VALID_NPZ = _npz_bytes({"x_train": np.zeros((4, 2, 2), np.uint8), "y_train": np.arange(4) % 2,
                        "x_test": np.ones((2, 2, 2), np.float32), "y_test": np.array([0, 1])})


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), _mutations(VALID_NPZ),
                     st.fixed_dictionaries({k: ANY_ARRAY for k in ("x_train", "y_train",
                                                                   "x_test", "y_test")},
                                           optional={"classes": ANY_ARRAY}).map(_npz_bytes)))
def test_fuzz_npz(work, raw):
    (work / "fuzz.npz").write_bytes(raw)
    _valid_or_data_error("npz:fuzz.npz", work)


def _pickled(batch: dict) -> bytes:
    return pickle.dumps(batch)


PICKLABLE = st.one_of(st.none(), st.integers(-5, 20), st.binary(max_size=4), st.text(max_size=3),
                      st.lists(st.integers(-2, 12), max_size=5), hnp.arrays(ANY_DTYPE, st.just((2, 3072))),
                      hnp.arrays("u1", hnp.array_shapes(max_dims=3, max_side=4)))
VALID_BATCH = cifar_batch(2)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), _mutations(VALID_BATCH),
                     st.dictionaries(st.sampled_from([b"data", b"labels", "data", b"x"]),
                                     PICKLABLE, max_size=3).map(_pickled)))
def test_fuzz_cifar(work, raw):
    folder = work / "cifar-10-batches-py"
    if not folder.exists():
        write_cifar_folder(folder, n=2)
    (folder / "test_batch").write_bytes(raw)
    _valid_or_data_error("cifar10", folder)
