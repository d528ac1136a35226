"""The study grid: cells stored as they finish, resume after kill -9, workers, failures, status.

A small real study (the memorisation study on 8x8 digits: a CNN, 18 cells with tuning cells that the
arms need) is run once uninterrupted in this process; every other way of running it (two worker
processes, killed between cells or in the middle of one and resumed, a corrupt cell file) must
write the same metrics.json, bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import forked, once_per_session

from aelab.cli import main
from aelab.errors import CheckpointError, ConfigError
from aelab.studies import base, executors, runner
from aelab.studies.base import Cell, Results, Study, StudyConfig

# 18 cells (one training-set size): every kind of cell, tuning cells and the figures' cells among them
TINY = ["data=digits", "seeds=2", "sizes=(100,)", "lambdas=(-1.0,0.0,1.0)", "bounded=('hinge',)", "steps=6",
        "probe_features=64", "tune_wd=(0.05,)", "tune_dropout=(0.3,)", "tune_vib=(0.001,)", "noise_sizes=(100,)",
        "headline_lambda=1.0", "train.batch_size=64", "train.progress=off"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The tiny memorisation study, uninterrupted, in one process (workers=1): once per test session."""
    return once_per_session(tmp_path_factory, "memorization-tiny", lambda out: runner.run_study(
        "memorization", overrides=TINY + ["workers=1", f"out_dir={out}"]))


CHILD = textwrap.dedent("""
    import os, signal, sys
    import aelab.data.device, aelab.studies.store
    from aelab.cli import main
    where, n = sys.argv[1], int(sys.argv[2])
    writes = [0]
    orig_write = aelab.studies.store.CellStore.write
    def write(self, *a, **k):
        row = orig_write(self, *a, **k)
        writes[0] += 1
        if where == "between" and writes[0] == n:  # the n-th cell is stored: die before the next starts
            os.kill(os.getpid(), signal.SIGKILL)
        return row
    aelab.studies.store.CellStore.write = write
    orig_batch = aelab.data.device.DeviceData.batch
    def batch(self, idx):  # after n cells are stored, die in the middle of the next one's training
        if where == "in-cell" and writes[0] >= n:
            os.kill(os.getpid(), signal.SIGKILL)
        return orig_batch(self, idx)
    aelab.data.device.DeviceData.batch = batch
    sys.argv = ["aelab", "study", *sys.argv[3:]]
    main()
""")


def _killed_run(tmp_path: Path, where: str, n: int) -> Path:
    args = ["memorization", *TINY, "workers=1", f"out_dir={tmp_path}", "name=m"]
    proc = forked("-c", CHILD, where, str(n), *args)  # torch already imported: no interpreter start
    assert proc.returncode == -9, proc.stderr[-2000:]
    return tmp_path / "m"


def _resume(path: Path, *overrides: str) -> None:
    sys.argv = ["aelab", "study", "--resume", str(path), *overrides]
    main()


@pytest.mark.parametrize("where,n", [("between", 9), ("in-cell", 12)])
def test_kill_9_then_resume_writes_the_same_metrics(tmp_path, reference, where, n, capsys):
    path = _killed_run(tmp_path, where, n)
    stored = sorted(p.name for p in (path / "cells").glob("*.json"))
    assert len(stored) == n and not (path / "metrics.json").exists()
    _resume(path)
    assert (path / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    ran = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert len(ran) == 18 - n  # only the cells that were missing ran again


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_the_study_and_resume_finishes_it(tmp_path, reference, workers):
    args = [sys.executable, "-m", "aelab", "study", "memorization", *TINY, f"workers={workers}",
            f"out_dir={tmp_path}", "name=m"]
    # started with SIGINT ignored, as a shell's `cmd &` does: the study must still stop on it
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    cells = tmp_path / "m" / "cells"
    while len(list(cells.glob("*.json"))) < 4:  # early: the other 14 cells leave a wide window for the signal
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-2000:]
    assert f"continue with `aelab study --resume {tmp_path / 'm'}`" in err
    assert not list(cells.glob("*.failed.json"))  # an interrupted cell is not a failed one
    _resume(tmp_path / "m")
    assert (tmp_path / "m" / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()


def test_two_workers_write_the_same_metrics_as_one(tmp_path, reference):
    path = runner.run_study("memorization", overrides=TINY + ["workers=2", f"out_dir={tmp_path}"])
    assert (path / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    sessions = json.loads((path / "study.json").read_text())["sessions"]
    assert sessions[0]["workers"] == 2


def test_a_corrupt_or_half_written_cell_is_run_again(tmp_path, reference, capsys):
    path = _killed_run(tmp_path, "between", 14)  # 2 of the stored cells hold arrays (the figures' cells)
    cells = sorted((path / "cells").glob("*.json"))
    cells[0].write_text(cells[0].read_text()[:50])  # half written
    key_of = lambda a: a.name.rsplit(".", 2)[0]  # noqa: E731  <key>.<sha16>.safetensors
    arrays = next(a for a in sorted((path / "cells").glob("*.safetensors")) if key_of(a) != cells[0].name[:-5])
    arrays.write_bytes(arrays.read_bytes()[:-8] + b"garbage!")  # its JSON names a checksum that no longer matches
    _resume(path)
    assert (path / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    reran = [line.split()[1] for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert cells[0].name[:-5] in reran and key_of(arrays) in reran and len(reran) == 18 - 14 + 2


def test_resume_refuses_a_changed_config_and_accepts_more_workers(tmp_path):
    path = _killed_run(tmp_path, "between", 3)
    with pytest.raises(ConfigError, match=r"seeds, steps"):
        runner.resume_study(path, ["steps=13", "seeds=3", "workers=2"])
    assert runner.study_status(path)["done"] == 3
    with pytest.raises(CheckpointError, match="not a study folder"):
        runner.resume_study(tmp_path / "nothing")


def test_memorization_quick_preset():
    cls = base.get_study("memorization")
    quick = cls().preset(runner.make_config(cls.Config(), None, ["data=digits", "quick=true"]))
    doc = runner.config_doc(quick)
    assert doc["seeds"] == 3 and doc["sizes"] == [1000, 5000] and doc["steps"] == 250 and doc["budget"] == 0.8


# --------------------------------------------------------------------------- a toy study for the runner's rules


@dataclass
class ToyConfig(StudyConfig):
    fail: str = ""  # the key of a cell that raises


@dataclass(frozen=True)
class ToyCell(Cell):
    part: str = ""


FLAKY = {"on": True}


class Toy(Study):
    """Cells square their seed; `total` cells need every `square` cell of their seed."""

    Config = ToyConfig
    study_name = "toy"
    headline = "value"

    def preset(self, cfg):
        return dataclasses.replace(cfg, seeds=1)

    def cells(self, cfg):
        seeds = range(cfg.seed, cfg.seed + cfg.seeds)
        return [ToyCell("square", s, part=p) for s in seeds for p in ("a", "b")] + [ToyCell("total", s) for s in seeds]

    def needs(self, cfg, cell):
        return [ToyCell("square", cell.seed, part=p) for p in ("a", "b")] if cell.arm == "total" else []

    def run_cell(self, cfg, cell, ctx):
        if cell.key == cfg.fail and FLAKY["on"]:
            raise ValueError("planted failure")
        if cell.arm == "total":
            return {"value": sum(d["value"] for d in ctx.deps.values())}
        return {"value": cell.seed ** 2 + (cell.part == "b")}

    def summarize(self, cfg, results: Results, out):
        return {"totals": results.column("value", arm="total"), "parts": results.values("part")}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(base._STUDIES, "toy", Toy)
    monkeypatch.setattr(runner, "write_report", lambda path: path / "report.html")
    FLAKY["on"] = True


def test_cell_keys_are_readable_and_name_every_axis():
    assert ToyCell("square", 2, part="b").key == "square.partb.seed2"
    assert Cell("lam=+1 x/y", 0, 300).key == "lam=+1_x_y.n300.seed0"


def test_needs_run_first_and_the_summary_reads_stored_rows(tmp_path, toy):
    path = runner.run_study("toy", overrides=[f"out_dir={tmp_path}", "workers=1"])
    m = json.loads((path / "metrics.json").read_text())
    assert m["totals"] == [1, 3, 9] and m["parts"] == ["a", "b", ""]  # seed**2 + seed**2 + 1
    assert m["meta"]["cells"] == 9 and m["meta"]["finished"] is True


def test_a_failed_cell_is_named_the_rest_stored_and_resume_retries_it(tmp_path, toy, capsys):
    key = ToyCell("square", 1, part="a").key
    with pytest.raises(runner.StudyFailed) as e:
        runner.run_study("toy", overrides=[f"out_dir={tmp_path}", "workers=1", f"fail={key}", "name=t"])
    msg = str(e.value)
    assert f"{key} (ValueError: planted failure)" in msg and "total.seed1 (needs a failed cell)" in msg
    assert e.value.exit_code == 2
    path = tmp_path / "t"
    status = runner.study_status(path)
    assert status["done"] == 7 and status["failed"] == {key: "ValueError: planted failure"}
    assert status["remaining"] == 2
    assert set(status["seconds_by_arm"]) == {"square", "total"}  # the failed cell's arm took no stored time
    assert sum(status["seconds_by_arm"].values()) == pytest.approx(status["cell_seconds"])
    sys.argv = ["aelab", "study", "--status", str(path)]
    main()
    out = capsys.readouterr().out
    assert "7 of 9 cells done, 1 failed, 2 remaining" in out and "seconds per arm: square " in out
    FLAKY["on"] = False
    runner.resume_study(path)
    assert json.loads((path / "metrics.json").read_text())["totals"] == [1, 3, 9]
    assert not list((path / "cells").glob("*.failed.json"))


def test_results_helpers():
    r = Results([{"arm": "a", "seed": 1, "n": 5, "v": 2.0}, {"arm": "a", "seed": 0, "n": 5, "v": 1.0},
                 {"arm": "b", "seed": 0, "n": 5, "v": 7.0}])
    assert r.column("v", arm="a") == [1.0, 2.0]  # by seed: paired across arms
    assert r.values("arm") == ["a", "b"] and len(r.where(n=5)) == 3
    assert r.one(arm="b")["v"] == 7.0
    with pytest.raises(KeyError):
        r.one(arm="a")


def test_quick_preset_is_applied_before_the_config_is_stored(tmp_path, toy):
    path = runner.run_study("toy", overrides=[f"out_dir={tmp_path}", "workers=1", "quick=true"])
    assert json.loads((path / "config.json").read_text())["seeds"] == 1  # what ran, not the full preset's 3
    assert json.loads((path / "metrics.json").read_text())["totals"] == [1]


def test_meta_lists_the_commit_of_the_cells_not_of_the_summary(tmp_path, toy, monkeypatch):
    seen = []
    orig = Toy.summarize
    monkeypatch.setattr(Toy, "summarize", lambda *a: seen.append(1) or orig(*a))
    monkeypatch.setattr(runner, "git_commit", lambda: "at-end" if seen else "at-start")
    monkeypatch.setitem(executors._WORKER, "code", {"git_commit": "cells", "aelab_version": "0.1.0"})
    path = runner.run_study("toy", overrides=[f"out_dir={tmp_path}", "workers=1"])
    assert json.loads((path / "metrics.json").read_text())["meta"]["git_commits"] == ["cells"]


def test_sen_study_refuses_another_model(tmp_path):
    with pytest.raises(ConfigError, match="keep model=sen"):
        runner.run_study("sen", overrides=["model=conv", f"out_dir={tmp_path}"])


def test_ray_executor_stores_the_same_study(tmp_path):
    """A local Ray instance (2 CPUs) runs each cell as a task; the driver stores them; same metrics."""
    pytest.importorskip("ray")
    over = ["data=digits", "quick=true", "seeds=2", "models=('dense',)", f"out_dir={tmp_path}"]  # 2 cells, 2 tasks
    local = runner.run_study("features", overrides=over + ["workers=1", "name=local"])
    ray_run = runner.run_study("features", overrides=over + ["executor=ray", "workers=2", "name=ray"])
    assert (ray_run / "metrics.json").read_bytes() == (local / "metrics.json").read_bytes()
    assert len(list((ray_run / "cells").glob("*.json"))) == 2
