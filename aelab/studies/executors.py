"""Where cells run: in this process, in local worker processes, or as tasks on a Ray cluster.

Every executor runs the same `run_cell_task` and hands back `Outcome`s; the runner decides what runs
next. Local workers store their cell's files themselves before they take the next cell (a killed
driver loses nothing a worker finished) and die with their driver (a `kill -9` leaves no orphans);
Ray tasks return their result as CPU numpy arrays and the driver stores it. A cell that raises, or
whose result cannot be stored (not serialisable, a full disk), comes back as a failed `Outcome`.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import hashlib
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engine import TrainingInterrupted
from ..errors import AelabError, ConfigError

_WORKER: dict[str, Any] = {}  # this process's device (a worker's slot) and its rebuilt studies


@dataclass
class Outcome:
    key: str
    ok: bool
    seconds: float
    row: dict[str, Any] | None = None  # the stored tidy row, when ok
    result: dict[str, Any] | None = None  # Ray: the raw result, stored by the driver
    error: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}" if not isinstance(e, AelabError) else str(e)
    return " ".join(text.split())[:400]


def _materialise(study_name: str, cfg_doc: dict):
    """(study, cfg, {key: cell}) rebuilt in this process from the config document (memoised)."""
    from .base import get_study
    from .runner import config_from_doc

    memo = _WORKER.setdefault("studies", {})
    token = (study_name, repr(sorted(cfg_doc.items())))
    if token not in memo:
        cls = get_study(study_name)
        cfg = config_from_doc(cls, cfg_doc)
        study = cls()
        memo[token] = (study, cfg, {c.key: c for c in study.cells(cfg)})
    return memo[token]


def compute_cell(study_name: str, cfg_doc: dict, key: str, deps: dict, device: str | None,
                 scope: str = "", workdir: Path | None = None) -> tuple[dict, float, str]:
    """Run one cell here: (its result, seconds, the device it ran on). `scope` keys the process-wide
    cache (`CellContext.cached`), so two studies in one process never read each other's values;
    `workdir` is where the cell may keep a training checkpoint (CellContext)."""
    from ..data.device import pick_device
    from .base import CellContext

    study, cfg, grid = _materialise(study_name, cfg_doc)
    dev = torch.device(device) if device else pick_device(cfg.train.device)
    t0 = time.perf_counter()
    result = study.run_cell(cfg, grid[key], CellContext(dev, deps, scope, workdir))
    return result, time.perf_counter() - t0, str(dev)


def code_version() -> dict[str, str]:
    """The commit (`+dirty` with local changes) and aelab version of the code this process runs, read
    once: a process runs the code it imported, whatever happens to the files afterwards."""
    if "code" not in _WORKER:
        from .. import __version__
        from ..runs import git_commit

        _WORKER["code"] = {"git_commit": git_commit(), "aelab_version": __version__}
    return _WORKER["code"]


def run_cell_task(study_name: str, cfg_doc: dict, key: str, deps: dict, folder: str | None,
                  config_sha: str) -> Outcome:
    """A worker's whole job for one cell: compute it and, with a `folder`, store it before returning."""
    from .store import CellStore

    t0 = time.perf_counter()
    meta: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), **code_version()}
    workdir = partial_dir(Path(folder), key) if folder is not None else None
    try:
        result, meta["seconds"], meta["device"] = compute_cell(study_name, cfg_doc, key, deps,
                                                               _WORKER.get("device"), config_sha, workdir)
    except TrainingInterrupted:  # Ctrl-C / SIGTERM: the study stops; this cell is simply not stored
        raise
    except Exception as e:  # noqa: BLE001  one cell's failure is recorded; the others go on
        if os.environ.get("AELAB_DEBUG"):
            traceback.print_exc()
        return Outcome(key, False, time.perf_counter() - t0, error=_one_line(e))
    if folder is None:  # Ray: the driver stores it, and a driver without CUDA must be able to read it
        return Outcome(key, True, meta["seconds"], result=to_host(result), meta=meta)
    cell = _materialise(study_name, cfg_doc)[2][key].record()
    out = store_cell(CellStore(Path(folder), config_sha), key, cell, result, meta)
    if out.ok:  # stored: its training checkpoint has served
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(OSError):  # the last one out removes the folder
            workdir.parent.rmdir()
    return out


def partial_dir(folder: Path, key: str) -> Path:
    """The folder where cell `key` of the study in `folder` keeps its training checkpoint until it is stored."""
    return folder / "partial" / hashlib.sha1(key.encode()).hexdigest()[:16]


def store_cell(store, key: str, cell: dict, result: dict, meta: dict) -> Outcome:
    """Store a computed cell; a result that cannot be stored (not serialisable, a full disk) makes a
    failed cell with its reason, like a cell that raised, instead of stopping the study."""
    try:
        row = store.write(key, cell, result, meta)
    except Exception as e:  # noqa: BLE001
        if os.environ.get("AELAB_DEBUG"):
            traceback.print_exc()
        return Outcome(key, False, meta["seconds"], error=f"its result could not be stored: {_one_line(e)}",
                       meta=meta)
    return Outcome(key, True, meta["seconds"], row=row, meta=meta)


def to_host(value: Any) -> Any:
    """`value` with every torch tensor (in nested dicts, lists and tuples too) as a CPU numpy array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: to_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_host(v) for v in value)
    return value


# What a worker needs before its first cell, imported once in the fork server rather than once per worker
# (torch and its compiler front end alone take ~3 s of CPU per process; optimizers import the latter).
_PRELOAD = ["aelab.studies.executors", "aelab.engine", "aelab.models", "torch._dynamo"]


def worker_context() -> mp.context.BaseContext:
    """How worker processes start: forked from a fork server that imported torch and never ran anything
    (no threads, CUDA state or locks to inherit, and no import per worker); `spawn` where the platform has
    no fork server (Windows)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _init_worker(slots, devices: list[str], threads: int, parent: int) -> None:
    _die_with(parent)
    torch.set_num_threads(threads)
    slot = slots.get()
    if devices:
        _WORKER["device"] = devices[slot % len(devices)]
        if devices[0].startswith("cuda"):
            torch.cuda.set_device(torch.device(_WORKER["device"]))


def _die_with(driver: int) -> None:
    """End this worker when its driver dies, even by kill -9, which runs no cleanup. Its parent is the
    driver (spawn) or the driver's fork server, which exits when the driver does. On Linux the kernel
    sends it SIGKILL when that parent dies (PR_SET_PDEATHSIG); everywhere a thread also watches both
    pids (the portable way, and a cover for a parent that died before prctl ran)."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(driver, parent), daemon=True, name="aelab-watch-driver").start()


def _watch_parent(driver: int, parent: int) -> None:
    while os.getppid() == parent and _alive(driver):  # an orphan is adopted: its parent pid changes
        time.sleep(1.0)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pid reused by another user's process: ours is gone
        return False
    return True


class InlineExecutor:
    """workers=1: cells one after another in this process (with `threads` torch threads)."""

    def __init__(self, threads: int, devices: list[str]):
        self.capacity, self.done = 1, []
        self.saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        _WORKER["device"] = devices[0] if devices else None

    @property
    def in_flight(self) -> int:
        return len(self.done)

    def submit(self, *args) -> None:
        self.done.append(run_cell_task(*args))

    def wait(self) -> list[Outcome]:
        out, self.done = self.done, []
        return out

    def close(self, cancel: bool = False) -> None:
        torch.set_num_threads(self.saved)
        _WORKER.pop("device", None)


class PoolExecutor:
    """workers=N: N processes from `worker_context` (no CUDA state or locks inherited)."""

    def __init__(self, workers: int, threads: int, devices: list[str]):
        self.capacity, self.args = workers, (workers, threads, devices)
        self.pending: dict[cf.Future, str] = {}
        self._start()

    def _start(self) -> None:
        workers, threads, devices = self.args
        ctx = worker_context()
        slots = ctx.Queue()
        for i in range(workers):
            slots.put(i)
        self.pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                           initargs=(slots, devices, threads, os.getpid()))

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def submit(self, *args) -> None:
        self.pending[self.pool.submit(run_cell_task, *args)] = args[2]

    def wait(self) -> list[Outcome]:
        done, _ = cf.wait(self.pending, return_when=cf.FIRST_COMPLETED)
        out, broken = [], False
        for fut in done:
            key = self.pending.pop(fut)
            try:
                out.append(fut.result())
            except cf.process.BrokenProcessPool:
                broken = True
                out.append(Outcome(key, False, 0.0, error="its worker process died (killed, or out of memory)"))
        if broken:  # every other cell in flight died with the pool: report them, start a fresh pool
            out += [Outcome(k, False, 0.0, error="its worker process died (killed, or out of memory)")
                    for k in self.pending.values()]
            self.pending.clear()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self._start()
        return out

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for p in list(getattr(self.pool, "_processes", {}).values()):
                p.terminate()  # an interrupted study stops its workers now, not after their cells
        self.pool.shutdown(wait=not cancel, cancel_futures=cancel)


def ray_resources(device: str, threads: int, gpus_per_cell: float, cluster_gpus: float) -> dict[str, float]:
    """A cell task's Ray resources: a GPU share only where `train.device` lets cells use a GPU (auto,
    cuda, cuda:N) and the cluster has GPUs; train.device=cpu runs on CPUs even on a GPU cluster."""
    wants_gpu = device == "auto" or device.startswith("cuda")
    return {"num_cpus": threads, "num_gpus": gpus_per_cell if wants_gpu and cluster_gpus > 0 else 0}


def ray_device(train_device: str, assigned_gpus: list) -> str | None:
    """A Ray task's device: the GPU Ray assigned it (Ray sets CUDA_VISIBLE_DEVICES, so "cuda"), else the
    CPU, never a GPU Ray did not assign; None (train.device decides) where cuda was asked for explicitly
    and none was assigned, so the cell fails with the usual one line instead of running elsewhere."""
    if assigned_gpus:
        return "cuda"
    return "cpu" if train_device in ("auto", "cpu") else None


class RayExecutor:
    """executor=ray: each cell a Ray task (`ray_resources`: num_cpus=threads, a GPU share where allowed)."""

    def __init__(self, address: str, threads: int, gpus: float, workers: int, device: str = "auto"):
        try:
            import ray
        except ImportError:
            raise ConfigError("executor=ray needs Ray: pip install -e '.[ray]'") from None
        self.ray, self.started = ray, not ray.is_initialized()
        if self.started:
            addr = address or os.environ.get("RAY_ADDRESS") or None
            ray.init(address=addr, include_dashboard=False, log_to_driver=False,
                     **({} if addr else {"num_cpus": max(workers, 1) * threads}))
        self.task = ray.remote(_ray_cell).options(**ray_resources(device, threads, gpus,
                                                                  ray.cluster_resources().get("GPU", 0)))
        self.capacity = max(workers, int(ray.cluster_resources().get("CPU", 1) // threads), 1)
        self.pending: dict[Any, str] = {}

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def submit(self, study_name, cfg_doc, key, deps, folder, config_sha) -> None:
        self.pending[self.task.remote(study_name, cfg_doc, key, deps, config_sha)] = key

    def wait(self) -> list[Outcome]:
        ready, _ = self.ray.wait(list(self.pending), num_returns=1)
        out = []
        for ref in ready:
            key = self.pending.pop(ref)
            try:
                out.append(self.ray.get(ref))
            except Exception as e:  # noqa: BLE001  a lost node or a crashed task
                out.append(Outcome(key, False, 0.0, error=_one_line(e)))
        return out

    def close(self, cancel: bool = False) -> None:
        for ref in self.pending:
            self.ray.cancel(ref, force=True)
        if self.started:  # a local instance this study started; a cluster's connection stays the caller's
            self.ray.shutdown()


def _ray_cell(study_name: str, cfg_doc: dict, key: str, deps: dict, config_sha: str) -> Outcome:
    import ray

    torch.set_num_threads(int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)) or 1)
    _WORKER["device"] = ray_device(cfg_doc.get("train.device", "auto"), ray.get_gpu_ids())
    return run_cell_task(study_name, cfg_doc, key, deps, None, config_sha)
