"""Shared fixtures: tiny data sets the tests make themselves, on the CPU."""
from __future__ import annotations

import os

# Before torch loads OpenMP, and for every process the tests start: waiting threads sleep rather than
# spin. Four test workers share the cores, and a spinning 2-thread process burns several times its
# work there (the results are the same).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Figures drawn in full but written as drafts (no layout engine, 30 dpi): about half their time, in this
# process and every process it starts. test_report.py renders each kind of figure as users get it.
os.environ.setdefault("AELAB_FIGURES", "draft")

import fcntl  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
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


def forked(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """What `subprocess.run([python, *argv], capture_output=True, text=True)` gives (exit code, -9 when
    the child killed itself; stdout; stderr) for `-c SCRIPT ARGS...` or `-m aelab ARGS...`, but the child
    is forked from this test process: it starts with torch and aelab imported, ~3.5 CPU-s less than a
    new interpreter. For children that run, fail or kill themselves; a test of the command line as a
    user types it starts a real interpreter. The child runs one torch thread: OpenMP's pool does not
    survive a fork, and one thread never touches it."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
                torch.set_num_threads(1)
                code = _run_argv(list(argv))
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired(argv, timeout)
            time.sleep(0.02)
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(done[1]),
                                           out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def _run_argv(argv: list[str]) -> int:
    """argv as the python command line would run it in __main__; its exit status."""
    try:
        if argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        elif argv[:2] == ["-m", "aelab"]:
            from aelab.cli import main

            sys.argv = ["aelab", *argv[2:]]
            main()
        else:
            raise ValueError(f"forked() runs -c SCRIPT or -m aelab, not {argv[:2]}")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    return 0
