"""Fault injection for studies (issue 22): kill -9 of a driver with workers, two drivers on one folder,
cross-talk through the process-wide cache, a full disk or an unserialisable result while a cell is
stored, a cell that raises, Ray's results and devices, and a resume after the code changed.

The kill and lock tests run real `python -m aelab study` drivers (the memorisation study on 8x8 digits
with cells made very long, so a driver is always in the middle of one); the rest use a toy study.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from aelab import atomic
from aelab.cli import main
from aelab.errors import CheckpointError
from aelab.runs import git_commit
from aelab.studies import base, executors, runner
from aelab.studies.base import Cell, CellContext, Results, Study, StudyConfig, seeds_of
from aelab.studies.store import CellStore
from test_cli import run_cli

# A memorisation study whose every cell trains for a very long time: a driver killed at any moment is
# in the middle of a cell. Only the first few seconds of it ever run.
ENDLESS = ["memorization", "data=digits", "seeds=2", "sizes=(100,300)", "lambdas=(-1.0,0.0,1.0)",
           "bounded=('hinge',)", "steps=1000000", "probe_features=64", "tune_wd=(0.05,)", "tune_dropout=(0.3,)",
           "tune_vib=(0.001,)", "noise_sizes=(100,)", "headline_lambda=1.0", "train.batch_size=64",
           "train.progress=off"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _why(proc: subprocess.Popen) -> str:
    return proc.stderr.read()[-2000:].decode() if proc.poll() is not None else "timed out"


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"  # a zombie has ended; only its exit status is left


def _descendants(pid: int) -> list[int]:
    """Every living process below `pid` (psutil is not a dependency: /proc)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (fields := _stat(int(d.name))) is not None:
            parent[int(d.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return [p for p in out if _alive(p)]


def _cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def _workers(pid: int) -> list[int]:
    """The pool workers below `pid`: spawned ones, or the fork server's children (not the server itself,
    nor multiprocessing's resource tracker)."""
    out = []
    for p in _descendants(pid):
        try:
            cmd, parent = Path(f"/proc/{p}/cmdline").read_bytes(), int(_stat(p)[1])
        except (OSError, TypeError):
            continue
        if b"spawn_main" in cmd or (b"forkserver" in cmd and parent != pid):
            out.append(p)
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_driver_leaves_no_worker_alive(tmp_path):
    driver = subprocess.Popen([sys.executable, "-m", "aelab", "study", *ENDLESS, "workers=2", f"out_dir={tmp_path}",
                               "name=m"], stderr=subprocess.PIPE, env=ENV)
    left: list[int] = []
    try:
        deadline = time.time() + 120
        # in the middle of a cell, as in the issue: both workers have spent more CPU than starting takes (a
        # worker forked from the fork server starts in well under a second; its endless cell then trains)
        while len(w := _workers(driver.pid)) < 2 or min(map(_cpu_seconds, w)) < 3:
            assert driver.poll() is None and time.time() < deadline, _why(driver)
            time.sleep(0.2)
        left = _descendants(driver.pid)
        driver.kill()  # SIGKILL: no handler, no cleanup in the driver
        driver.wait()
        deadline = time.time() + 10
        while any(map(_alive, left)) and time.time() < deadline:
            time.sleep(0.2)
        assert not [p for p in left if _alive(p)], "processes of the killed study are still alive"
    finally:
        for p in [driver.pid, *left]:  # without the fix: leave no orphan burning the CPU after the test
            if _alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        driver.wait()


def _report_start(queue) -> None:
    """A worker's view at its start: its parent, and whether torch's compiler front end was already loaded."""
    queue.put((os.getppid(), "torch._dynamo" in sys.modules))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork server is a POSIX start method")
def test_workers_fork_from_a_server_that_imported_torch_once():
    """A worker process starts with torch and its compiler front end already imported (forked from the fork
    server, not spawned as a fresh interpreter that imports them again), and its parent is that server."""
    ctx = executors.worker_context()
    queue = ctx.Queue()
    proc = ctx.Process(target=_report_start, args=(queue,))
    proc.start()
    parent, preloaded = queue.get(timeout=120)
    proc.join(timeout=60)
    assert ctx.get_start_method() == "forkserver" and preloaded
    assert parent != os.getpid()  # the server, which exits with this process


@pytest.mark.parametrize("gone", ["parent", "driver"])
def test_a_worker_ends_when_its_parent_is_gone_without_prctl(monkeypatch, gone):
    """The portable watch (macOS has no PR_SET_PDEATHSIG): a worker exits once it is adopted (its parent pid
    changes) or once its driver is gone while its parent, the driver's fork server, still lives."""
    exits = []
    monkeypatch.setattr(executors.os, "_exit", lambda code: exits.append(code) or sys.exit(code))
    monkeypatch.setattr(executors.time, "sleep", lambda s: exits.append("slept") if len(exits) < 3 else sys.exit(9))
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid names no process
    driver, parent = (os.getpid(), os.getppid() + 100000) if gone == "parent" else (dead.pid, os.getppid())
    with pytest.raises(SystemExit):
        executors._watch_parent(driver, parent)
    assert exits == [1]
    exits.clear()  # and while both live, it keeps watching
    with pytest.raises(SystemExit):
        executors._watch_parent(os.getpid(), os.getppid())
    assert exits == ["slept", "slept", "slept"]


def test_a_second_driver_exits_2_naming_the_first(tmp_path, monkeypatch, capsys):
    path = tmp_path / "m"
    first = subprocess.Popen([sys.executable, "-m", "aelab", "study", *ENDLESS, "workers=1", f"out_dir={tmp_path}",
                              "name=m"], stderr=subprocess.PIPE, env=ENV)
    try:
        deadline = time.time() + 60
        while not ((path / "study.json").exists() and (path / "study.lock").read_text().strip()):
            assert first.poll() is None and time.time() < deadline, _why(first)
            time.sleep(0.1)
        # the second driver is this process (flock: one lock per open file, whichever process holds it);
        # without the lock it would run the endless study: the alarm fails the test instead of hanging it
        def ran_the_study(*_):  # stop it as Ctrl-C would: it then exits 130, not 2
            os.kill(os.getpid(), signal.SIGINT)

        previous = signal.signal(signal.SIGALRM, ran_the_study)
        signal.alarm(60)
        try:
            code, _, err = run_cli(monkeypatch, capsys, "study", "--resume", str(path))
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        assert code == 2 and err.count("\n") == 1 and f"(pid {first.pid})" in err, err
        with pytest.raises(CheckpointError, match=f"pid {first.pid}"):  # a new study over it with --force
            runner.run_study(ENDLESS[0], overrides=[*ENDLESS[1:], f"out_dir={tmp_path}", "name=m"], force=True)
        assert (path / "config.json").exists()  # --force deleted nothing under the running driver
        assert first.poll() is None  # the first driver goes on
        # --status of a running study names its driver and times no probe (it would slow the study)
        assert runner.study_status(path)["running"] == str(first.pid)
        code, out, _ = run_cli(monkeypatch, capsys, "study", "--status", str(path))
        assert code == 0 and f"running (pid {first.pid}): no timed estimate" in out and "left:" not in out
    finally:
        first.kill()
        first.wait()
    with runner.study_lock(path):  # its holder died (kill -9): the kernel released the lock
        pass
    assert runner.study_status(path)["running"] is None


def test_interleaved_writers_never_pair_a_json_with_the_others_arrays(tmp_path, monkeypatch):
    """Writer A stores its arrays, writer B stores the whole cell, then A writes its JSON: the cell on disk
    is A's, whole (its arrays file is named by its hash, so B's did not replace it)."""
    store = CellStore(tmp_path, "sha")
    from aelab.studies import store as store_module

    real = store_module.atomic_write_text
    interleave = [True]

    def write_text(path, text):
        if interleave[0] and path.name == "k.json":
            interleave[0] = False
            store.write("k", {"arm": "a"}, {"x": np.full(4, 2.0)}, {"by": "B"})
        real(path, text)

    monkeypatch.setattr(store_module, "atomic_write_text", write_text)
    store.write("k", {"arm": "a"}, {"x": np.full(4, 1.0)}, {"by": "A"})
    row = store.load("k")
    assert row is not None, "the cell vanished: its JSON names the other writer's arrays"
    np.testing.assert_array_equal(row[0]["x"], np.full(4, 1.0))
    assert json.loads((tmp_path / "cells" / "k.json").read_text())["by"] == "A"


# --------------------------------------------------------------------------- a toy study for the rest


@dataclass
class FaultyConfig(StudyConfig):
    bad: str = ""  # the key of a cell whose result cannot be stored
    boom: str = ""  # the key of a cell that raises (while PLANTED["boom"])
    tensors: bool = False  # results as torch tensors, as a GPU cell returns them


PLANTED = {"boom": True}  # outside the config: a resume (same config) may find the fault gone


class Faulty(Study):
    """Each cell sums the data set's training pixels (read through the process-wide cache) plus its seed."""

    Config = FaultyConfig
    study_name = "faulty"
    headline = "value"

    def cells(self, cfg):
        return [Cell("a", s) for s in seeds_of(cfg)]

    def run_cell(self, cfg, cell, ctx):
        if cell.key == cfg.boom and PLANTED["boom"]:
            raise ValueError("planted failure")
        if cell.key == cfg.bad:
            return {"value": object()}
        value = float(ctx.dataset(cfg).x_train.sum()) + cell.seed
        if cfg.tensors:
            return {"value": torch.tensor(value), "arr": torch.full((3,), float(cell.seed)), "nested": [torch.ones(2)]}
        return {"value": value, "arr": np.full(3, float(cell.seed))}

    def summarize(self, cfg, results: Results, out):
        return {"values": results.column("value")}


@pytest.fixture
def faulty(monkeypatch, blobs_npz, tmp_path):
    monkeypatch.setitem(base._STUDIES, "faulty", Faulty)
    monkeypatch.setattr(runner, "write_report", lambda path: path / "report.html")
    monkeypatch.setitem(PLANTED, "boom", True)
    return [f"data={blobs_npz}", "workers=1", "seeds=3", f"out_dir={tmp_path}", "name=f"]


def _cli(*args: str) -> int:
    sys.argv = ["aelab", "study", *args]
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code


def test_a_resume_while_the_lock_is_held_exits_2_naming_the_holder(tmp_path, faulty, capsys):
    assert _cli("faulty", *faulty, "boom=a.seed1") == 2
    capsys.readouterr()
    with runner.study_lock(tmp_path / "f"):
        assert _cli("--resume", str(tmp_path / "f")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"being run by another aelab process (pid {os.getpid()})" in err
    PLANTED["boom"] = False
    runner.resume_study(tmp_path / "f")  # released: the resume runs
    assert (tmp_path / "f" / "metrics.json").exists()


def test_a_cell_that_raises_is_a_failed_cell_and_one_line(tmp_path, faulty, capsys):
    assert _cli("faulty", *faulty, "boom=a.seed1") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("aelab: error: 1 of 3 cells did not finish: a.seed1 (ValueError: planted failure)")
    failed = json.loads((tmp_path / "f" / "cells" / "a.seed1.failed.json").read_text())
    assert failed["error"] == "ValueError: planted failure"


def test_an_unserialisable_result_is_a_failed_cell(tmp_path, faulty):
    with pytest.raises(runner.StudyFailed, match=r"a\.seed0 \(its result could not be stored: TypeError: a cell "
                                                 r"result holds a object"):
        runner.run_study("faulty", overrides=[*faulty, "bad=a.seed0"])
    failed = json.loads((tmp_path / "f" / "cells" / "a.seed0.failed.json").read_text())
    assert "holds a object" in failed["error"]
    assert runner.study_status(tmp_path / "f")["done"] == 2  # the other cells are stored


def test_a_full_disk_while_storing_a_cell_is_a_failed_cell(tmp_path, faulty, monkeypatch):
    real_open, full = open, [True]

    def full_disk(path, mode="r", *a, **k):  # the cell's files find the disk full; a small note still fits
        if full[0] and "a.seed2." in str(path) and ".failed.json" not in str(path) and "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(atomic, "open", full_disk, raising=False)
    with pytest.raises(runner.StudyFailed, match=r"a\.seed2 \(its result could not be stored: cannot write .*"
                                                 r"No space left on device"):
        runner.run_study("faulty", overrides=faulty)
    failed = json.loads((tmp_path / "f" / "cells" / "a.seed2.failed.json").read_text())
    assert "No space left on device" in failed["error"]
    assert not list((tmp_path / "f" / "cells").glob(".*tmp*"))  # no half-written file left behind
    full[0] = False  # space again: the resume stores the cell and finishes the study
    runner.resume_study(tmp_path / "f")
    assert not list((tmp_path / "f" / "cells").glob("*.failed.json"))


def test_the_executor_and_tracker_are_closed_whatever_stops_the_loop(tmp_path, faulty, monkeypatch):
    closed, finished = [], []
    monkeypatch.setattr(executors.InlineExecutor, "close", lambda self, cancel=False: closed.append(cancel))
    real_start = runner.tracking.start

    def start(*a, **k):
        tracker = real_start(*a, **k)
        tracker.finish = lambda status="FINISHED": finished.append(status)
        return tracker

    monkeypatch.setattr(runner.tracking, "start", start)

    def broken(*a, **k):
        raise RuntimeError("a bug after the first cell")

    monkeypatch.setattr(runner, "_finish", broken)
    with pytest.raises(RuntimeError, match="a bug after the first cell"):
        runner.run_study("faulty", overrides=faulty)
    assert closed == [True] and finished == ["FAILED"]


# --------------------------------------------------------------------------- cross-talk through caches


def test_cached_values_are_keyed_by_the_study_config():
    a, b = CellContext("cpu", scope="config-a"), CellContext("cpu", scope="config-b")
    assert a.cached("protocol", lambda: "made for a") == "made for a"
    assert b.cached("protocol", lambda: "made for b") == "made for b"
    assert a.cached("protocol", lambda: "again") == "made for a"  # still cached within its own config


def test_a_study_reads_its_data_afresh(tmp_path, faulty):
    """A data file rewritten between two studies in one process: the second study reads the new one."""
    first = runner.run_study("faulty", overrides=faulty)
    npz = Path(faulty[0].removeprefix("data=npz:"))
    with np.load(npz) as f:
        arrays = dict(f)
    np.savez(npz, **{**arrays, "x_train": arrays["x_train"] // 2})
    second = runner.run_study("faulty", overrides=[*faulty, "name=g"])
    got = [json.loads((p / "metrics.json").read_text())["values"][0] for p in (first, second)]
    assert got == [float(arrays["x_train"].sum()), float((arrays["x_train"] // 2).sum())]


def test_two_hashing_studies_on_different_data_in_one_process(tmp_path, blobs_npz):
    """Reproduced in issue 22: a study on noise reported exactly the mAPs of a study on blobs."""
    with np.load(blobs_npz.removeprefix("npz:")) as f:
        blobs = dict(f)
    rng = np.random.default_rng(1)
    noise = {k: rng.integers(0, 256, v.shape).astype(v.dtype) if k.startswith("x") else v for k, v in blobs.items()}
    np.savez(tmp_path / "noise.npz", **noise)
    fast = ["workers=1", "seeds=1", "bits=(8,)", "tune_bits=8", "methods=('semhash',)", "tune_noise=(4.0,)",
            "hidden=(16,)", "train.epochs=1", "cnn_bits=()", "train.batch_size=64", "train.progress=off",
            f"out_dir={tmp_path}"]
    maps = []
    for name, data in (("blobs", blobs_npz), ("noise", f"npz:{tmp_path / 'noise.npz'}")):
        path = runner.run_study("hashing", overrides=[*fast, f"data={data}", f"name={name}"])
        maps.append(json.loads((path / "metrics.json").read_text())["b8"]["test"]["itq"]["map"]["mean"])
    assert maps[0] > maps[1] + 0.2  # blobs' classes are findable by their pixels; noise's are not


# --------------------------------------------------------------------------- Ray


def test_ray_asks_for_a_gpu_only_where_train_device_allows_one():
    assert executors.ray_resources("cpu", 2, 1.0, 8) == {"num_cpus": 2, "num_gpus": 0}
    assert executors.ray_resources("auto", 2, 0.5, 8) == {"num_cpus": 2, "num_gpus": 0.5}
    assert executors.ray_resources("cuda:1", 1, 1.0, 8) == {"num_cpus": 1, "num_gpus": 1.0}
    assert executors.ray_resources("auto", 1, 1.0, 0) == {"num_cpus": 1, "num_gpus": 0}
    assert executors.ray_device("cpu", []) == "cpu" and executors.ray_device("auto", []) == "cpu"
    assert executors.ray_device("auto", [3]) == "cuda"  # the one Ray assigned (CUDA_VISIBLE_DEVICES)
    assert executors.ray_device("cuda", []) is None  # asked for cuda, none assigned: pick_device says why


def test_a_ray_task_returns_numpy_arrays_not_tensors(faulty):
    cfg = runner.make_config(FaultyConfig(), None, [*faulty, "tensors=true"])
    doc = runner.config_doc(cfg)
    out = executors.run_cell_task("faulty", doc, "a.seed1", {}, None, runner._sha(doc))  # folder None: Ray's way
    assert out.ok, out.error

    def tensors(v):
        if isinstance(v, dict):
            return sum(tensors(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return sum(tensors(x) for x in v)
        return isinstance(v, torch.Tensor)

    assert tensors(out.result) == 0
    np.testing.assert_array_equal(out.result["arr"], [1.0, 1.0, 1.0])
    assert isinstance(out.result["nested"][0], np.ndarray) and out.meta["device"] == "cpu"


# --------------------------------------------------------------------------- code versions


def test_git_commit_marks_a_dirty_working_tree(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-qm", "one")
    clean = git_commit(tmp_path)
    assert len(clean) >= 7 and "+" not in clean
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "+dirty"


def test_a_resume_with_other_code_warns_and_the_summary_lists_every_commit(tmp_path, faulty, monkeypatch, capsys):
    monkeypatch.setitem(executors._WORKER, "code", {"git_commit": "aaaaaaa", "aelab_version": "0.0.9"})
    with pytest.raises(runner.StudyFailed):
        runner.run_study("faulty", overrides=[*faulty, "boom=a.seed1"])
    cell = json.loads((tmp_path / "f" / "cells" / "a.seed0.json").read_text())
    assert (cell["git_commit"], cell["aelab_version"], cell["device"]) == ("aaaaaaa", "0.0.9", "cpu")
    capsys.readouterr()
    monkeypatch.setitem(executors._WORKER, "code", {"git_commit": "bbbbbbb+dirty", "aelab_version": "0.1.0"})
    PLANTED["boom"] = False
    runner.resume_study(tmp_path / "f")
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "commit aaaaaaa (now bbbbbbb+dirty); aelab 0.0.9 (now 0.1.0)" in warning[0]
    meta = json.loads((tmp_path / "f" / "metrics.json").read_text())["meta"]
    assert meta["git_commits"] == ["aaaaaaa", "bbbbbbb+dirty"]


def test_a_resume_with_the_same_code_says_nothing(tmp_path, faulty, capsys):
    with pytest.raises(runner.StudyFailed):
        runner.run_study("faulty", overrides=[*faulty, "boom=a.seed1"])
    capsys.readouterr()
    PLANTED["boom"] = False
    runner.resume_study(tmp_path / "f")
    assert "warning" not in capsys.readouterr().err
    meta = json.loads((tmp_path / "f" / "metrics.json").read_text())["meta"]
    assert meta["git_commits"] == [executors.code_version()["git_commit"]]


def test_the_report_names_every_commit_and_keeps_dirty(tmp_path):
    from aelab.report import write_report

    (tmp_path / "config.json").write_text('{"model": {"name": "dense"}}')
    meta = {"git_commit": "0123456789abcdef0123+dirty", "git_commits": ["aaaaaaa", "bbbbbbb+dirty"]}
    (tmp_path / "metrics.json").write_text(json.dumps({"meta": meta}))
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "commit 0123456789ab+dirty" in page and "commits aaaaaaa, bbbbbbb+dirty" in page
