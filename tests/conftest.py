"""Shared fixtures: tiny data sets the tests make themselves, on the CPU."""
from __future__ import annotations

import os

# Before torch loads OpenMP, and for every process the tests start: waiting threads sleep rather than
# spin. Four test workers share the cores, and a spinning 2-thread process burns several times its
# work there (the results are the same).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import fcntl  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from aelab.data import Dataset  # noqa: E402
from aelab.data.device import to_device  # noqa: E402

torch.set_num_threads(1)  # tests are tiny; one thread is faster and leaves the other core free


def make_blobs(n_train: int = 240, n_test: int = 80, size: int = 8, classes: int = 4, seed: int = 0) -> Dataset:
    """Images of a bright square whose position is the class, plus noise: learnable in seconds."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 60, (n, 1, size, size)).astype(np.uint8)
        for c in range(classes):
            r, col = divmod(c, 2)
            x[y == c, :, r * size // 2:(r + 1) * size // 2, col * size // 2:(col + 1) * size // 2] += 180
        return x, y.astype(np.int64)

    xtr, ytr = split(n_train)
    xte, yte = split(n_test)
    return Dataset("blobs", xtr, ytr, xte, yte, [f"c{i}" for i in range(classes)], "tests")


@pytest.fixture
def blobs() -> Dataset:
    return make_blobs()


@pytest.fixture
def blob_splits(blobs):
    return to_device(blobs, "cpu", val_fraction=0.2, seed=0)


def write_blobs_npz(folder) -> str:
    """The blobs written to folder/blobs.npz; the `npz:` data set name, so runs and the CLI can use them
    (a function too, for module-scoped fixtures, which cannot take `tmp_path`)."""
    path, ds = folder / "blobs.npz", make_blobs()
    np.savez(path, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
    return f"npz:{path}"


@pytest.fixture
def blobs_npz(tmp_path) -> str:
    return write_blobs_npz(tmp_path)


class Crash(Exception):
    """What `crash_after` raises: a fit stopped as a crash would stop it."""


def crash_after(epoch: int):
    """An `on_epoch` callback that raises Crash once `epoch` has ended (its checkpoint written)."""
    def hook(row: dict) -> None:
        if row["epoch"] == epoch:
            raise Crash
    return hook


def require(*modules: str, extra: str) -> None:
    """Skip the calling test module unless `modules` are installed, without importing them: collection
    runs in every test worker, and onnxscript or MLflow alone take over a second to import."""
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in modules):
        pytest.skip(f"the {extra} extra is not installed: pip install 'aelab[{extra}]'", allow_module_level=True)


def once_per_session(tmp_path_factory, name: str, build: Callable[[Path], object]):
    """`build(folder)` run once per test session, whatever the number of xdist workers: the first worker
    to ask builds it under a lock, the others wait and get its result (pytest-xdist's recipe for
    session-wide fixtures). Only for results the tests read and never change: a finished reference
    study or run. The result goes through the file system as the folder `build` wrote in, so it must be
    a path inside that folder, or a value rebuilt from it by the caller."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    base = tmp_path_factory.getbasetemp()
    root = base.parent if worker else base  # under xdist: the session's folder, above each worker's
    folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            folder.mkdir(exist_ok=True)
            done.write_text(str(build(folder)))
    return Path(done.read_text())
