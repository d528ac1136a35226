"""Run a study's grid: store each finished cell, resume after a kill, spread cells over workers or Ray.

    aelab study NAME [CONFIG.toml] [key=value ...]     # a new study folder runs/<name>
    aelab study --resume RUN [workers=4]               # only the cells not stored yet, then the summary
    aelab study --status RUN                           # cells done, failed, remaining; seconds per cell

The folder holds `config.json` (what runs: presets are applied before it is written), `cells/` (one
record per finished cell), `metrics.json` (computed from the stored cells alone, so a resumed study
writes the same file bit for bit; its meta lists the commits the cells came from), `study.json`
(commit, start, wall time per session: what differs between sessions stays out of metrics.json),
`study.lock`, `figures/` and `report.html`.

One driver at a time: run and resume hold an exclusive lock on `study.lock` while they execute (the
kernel drops it when the driver dies, even by kill -9), and a second driver stops with one line naming
the holder's pid. A resume with other code than the stored cells came from warns and goes on.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import threading
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import __version__, tracking
from ..atomic import atomic_write_text
from ..config import apply_overrides, from_dict, make_config, to_dict, _flatten
from ..engine import TrainingInterrupted
from ..errors import AelabError, CheckpointError, ConfigError
from ..readers import check_kind, read_json
from ..runs import claim_run_dir, git_commit
from .base import Results, Study, StudyConfig, clear_cache, get_study, usable_cores
from .executors import InlineExecutor, Outcome, PoolExecutor, RayExecutor, code_version, store_cell
from .store import CellStore

# Keys that say how cells run, not what they compute: a resume may change them.
EXECUTION_KEYS = {"name", "out_dir", "workers", "executor", "ray_address", "gpus_per_cell", "tracking",
                  "tracking_uri", "train.progress"}


class StudyFailed(AelabError):
    """Some cells raised; the others are stored and `--resume` retries the failed ones."""


class StudyInterrupted(AelabError):
    exit_code = 130


def config_doc(cfg: StudyConfig) -> dict[str, Any]:
    """The flat `key: value` document of what a study computes (execution keys left out)."""
    return {k: v for k, v in _flatten(json.loads(json.dumps(to_dict(cfg)))) if k not in EXECUTION_KEYS}


def config_from_doc(cls, doc: dict[str, Any]) -> StudyConfig:
    cfg = from_dict(cls.Config, _nest(doc))
    cfg.check()
    return cfg


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in flat.items():
        *path, last = k.split(".")
        node = out
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return out


def _sha(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- entry points


def run_study(name: str, config_file: str | Path | None = None, overrides: list[str] = (),
              force: bool = False) -> Path:
    """Run study `name` into `out_dir/<name>`; returns the folder (with metrics.json and report.html)."""
    cls = get_study(name)
    study = cls()
    cfg = make_config(cls.Config(), config_file, list(overrides))
    if cfg.quick:  # an explicit step before the config is stored: what is stored is what runs
        cfg = study.preset(cfg)
        cfg.check()
    study.cells(cfg)  # a grid that cannot be built (a bad label count, a missing data set) fails before any folder
    tracking.require(cfg.tracking)  # so does tracking=mlflow without MLflow
    folder = Path(cfg.out_dir) / (cfg.name or f"{name}-{cfg.data.name.replace(':', '-').replace('/', '_')}")
    if force and (folder / LOCK).exists():
        with study_lock(folder):  # --force must not delete a folder that another driver is writing
            pass
    path = claim_run_dir(folder, force)
    with study_lock(path):
        atomic_write_text(path / "config.json", json.dumps({"study": name, **to_dict(cfg)}, indent=2))
        _write_session(path, {"git_commit": git_commit(), "sessions": []})
        return _execute(study, cfg, path)


def resume_study(path: str | Path, overrides: list[str] = ()) -> Path:
    """Run the cells of study folder `path` that are not stored (or failed), then its summary.
    Overrides may change how cells run (workers=...), never what they compute."""
    path = Path(path)
    name, stored = read_study_config(path)
    if (path / "metrics.json").exists():
        raise CheckpointError(f"study {path} has already finished (metrics.json exists); nothing to resume")
    cls = get_study(name)
    cfg = apply_overrides(config_from_doc(cls, stored), list(overrides))
    cfg.check()
    before, after = config_doc(config_from_doc(cls, stored)), config_doc(cfg)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        raise ConfigError(f"resume refused: {', '.join(changed)} would change what the study computes "
                          f"(stored: {', '.join(f'{k}={before.get(k)!r}' for k in changed)}); start a new "
                          "study with name=... instead")
    with study_lock(path):
        _warn_if_code_changed(path, cfg)
        return _execute(cls(), cfg, path)


LOCK = "study.lock"


@contextlib.contextmanager
def study_lock(path: Path):
    """Hold the study folder's exclusive lock (flock on `study.lock`, which holds the holder's pid) while
    this driver writes the folder, so two drivers never compute the same cells. The kernel releases it
    when the holder dies, even by kill -9: a stale lock file never blocks a resume."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (a second driver would compute cells twice, never mix them)
        yield
        return
    f = open(Path(path) / LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(f)
        f.close()
        raise CheckpointError(f"study {path} is being run by another aelab process (pid {holder}); wait for it "
                              f"to finish, or stop it (kill {holder}) and run `aelab study --resume {path}`") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock


def write_report(path: Path) -> Path:
    """The study's report.html (aelab.report, and with it matplotlib, imported only once the cells are done)."""
    from ..report import write_report as write

    return write(path)


def running_pid(path: Path) -> str | None:
    """The pid of the driver running the study in `path` now (it holds the lock), else None."""
    try:
        import fcntl
    except ImportError:
        return None
    if not (Path(path) / LOCK).exists():
        return None
    with open(Path(path) / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _lock_holder(f)
        return None  # closing the file releases the lock just taken


def _lock_holder(f) -> str:
    for _ in range(20):  # the holder writes its pid just after it takes the lock
        f.seek(0)
        if pid := f.read().strip():
            return pid
        time.sleep(0.05)
    return "unknown"


def _warn_if_code_changed(path: Path, cfg: StudyConfig) -> None:
    """A resume keeps the cells that other code (another commit, aelab version or device type) stored:
    they are not recomputed, so say which differ; metrics.json will list every commit (issue 22: warn,
    not refuse, since a fix of a typo should not throw away hours of cells)."""
    from ..data.device import pick_device

    now = {**code_version(), "device": pick_device(cfg.train.device).type}
    stored = CellStore(path, _sha(config_doc(cfg))).provenance().values()
    diffs = []
    for field, label in (("git_commit", "commit"), ("aelab_version", "aelab"), ("device", "device")):
        old = sorted({p[field].split(":")[0] if field == "device" else p[field] for p in stored} - {now[field]})
        if old:
            diffs.append(f"{label} {', '.join(old)} (now {now[field]})")
    if diffs:
        print(f"aelab: warning: {path}: stored cells came from {'; '.join(diffs)}; they are kept, not recomputed, "
              "and metrics.json lists every commit; for results of one commit start a new study with name=...",
              file=sys.stderr, flush=True)


def read_study_config(path: Path) -> tuple[str, dict[str, Any]]:
    """(study name, the stored flat config) of a study folder, with its study.json and cells/ checked:
    a corrupt one is one line naming the file, before anything runs or is written."""
    path = Path(path)
    if not path.is_dir() or not (path / "config.json").exists() and not (path / "config.json").is_symlink():
        raise CheckpointError(f"{path} is not a study folder (no config.json)")
    doc = read_json(path / "config.json")
    if "study" not in doc:
        raise CheckpointError(f"{path} is a training run, not a study; use aelab train --resume {path}")
    name = doc.pop("study")
    flat = dict(_flatten(doc))
    try:
        config_from_doc(get_study(check_kind(name, str, f"{path / 'config.json'}[study]")), flat)
    except ConfigError as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from None
    read_session(path)
    cells = path / "cells"
    if (cells.exists() or cells.is_symlink()) and not cells.is_dir():
        raise CheckpointError(f"{cells} is not a folder: restore the study's cells folder (or move it away "
                              "to run every cell again)")
    # a corrupt cell file is run again and rewritten; a folder in its place could not be rewritten
    stray = next((p for p in cells.glob("*") if p.is_dir()), None) if cells.is_dir() else None
    if stray is not None:
        raise CheckpointError(f"{stray} is a folder where a cell file belongs: move it away (the cell then runs again)")
    return name, flat


def read_session(path: Path) -> dict[str, Any]:
    """study.json: the commit the study started at and one entry per session; a new one when missing."""
    doc = read_json(Path(path) / "study.json", default=None)
    if doc is None:
        return {"git_commit": git_commit(), "sessions": []}
    sessions = doc.get("sessions", [])
    if not isinstance(sessions, list) or not all(
            isinstance(x, dict) and isinstance(x.get("wall_seconds", 0), (int, float)) for x in sessions):
        raise CheckpointError(f"{Path(path) / 'study.json'}: `sessions` must be a list of sessions; restore the "
                              "file (or delete it: the commit and wall times are then lost)")
    return {**doc, "sessions": sessions}


def _unreadable(store: CellStore, grid: list, rows: dict) -> list[str]:
    """Keys of the cells whose stored record exists but cannot be trusted (corrupt, cut short, another
    config): they run again, and the user is told so."""
    return [c.key for c in grid if c.key not in rows and (store.dir / f"{c.key}.json").exists()]


def study_status(path: str | Path) -> dict[str, Any]:
    """Cells done, failed and remaining, and the seconds per stored cell (and per arm) so far."""
    path = Path(path)
    name, stored = read_study_config(path)
    cls = get_study(name)
    cfg = config_from_doc(cls, stored)
    grid = cls().cells(cfg)
    store = CellStore(path, _sha(config_doc(cfg)))
    loaded = {c.key: store.load(c.key) for c in grid}
    seconds = [rec[1]["seconds"] for rec in loaded.values() if rec]
    by_arm: dict[str, float] = {}  # "tune:wd" and "tune:dropout" together: the arm's kind before any ":"
    for c in grid:
        if loaded[c.key]:
            kind = c.arm.split(":")[0]
            by_arm[kind] = by_arm.get(kind, 0.0) + loaded[c.key][1]["seconds"]
    failed = {k: v["error"] for k, v in store.failures().items() if not loaded.get(k)}
    rows = {k: v for k, v in loaded.items() if v}
    partial = partial_states(path, [c.key for c in grid if not loaded[c.key]])
    return {"study": name, "cells": len(grid), "done": len(seconds), "failed": failed,
            "in_progress": {k: st["step"] for k, st in partial.items()},
            "latest": {k: latest_point(st["evals"]) for k, st in partial.items()},
            "running": running_pid(path),
            "unreadable": _unreadable(store, grid, rows),
            "remaining": len(grid) - len(seconds), "finished": (path / "metrics.json").exists(),
            "seconds_per_cell": sum(seconds) / len(seconds) if seconds else math.nan,
            "cell_seconds": sum(seconds), "seconds_by_arm": by_arm}


def in_progress(path: Path, keys: list[str]) -> dict[str, int]:
    """{cell key: optimiser steps done} of the cells among `keys` that left a training checkpoint (a long
    cell of a killed or running study: `--resume` goes on from there)."""
    return {key: int(state["step"]) for key, state in partial_states(path, keys).items()}


def partial_states(path: Path, keys: list[str]) -> dict[str, dict]:
    """{cell key: its training checkpoint's state (step, evals: the curve points so far)} of the cells
    among `keys` that left one; an unreadable checkpoint is left out (that cell starts afresh)."""
    from ..checkpoint import read_training
    from ..engine import CHECKPOINT
    from .executors import partial_dir

    out = {}
    for key in keys:
        ckpt = partial_dir(path, key) / CHECKPOINT
        if ckpt.exists():
            with contextlib.suppress(AelabError, OSError, KeyError, TypeError):
                state = read_training(ckpt)[1]["state"]
                out[key] = {"step": int(state["step"]), "evals": list(state.get("evals", []))}
    return out


def latest_point(evals: list[dict]) -> dict[str, float]:
    """The last curve point's scalar figures ({"step": .., "val.acc": ..}), {} before the first."""
    if not evals:
        return {}
    scalar = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    return {k: v for k, v in evals[-1].items() if k != "epoch" and scalar(v)}


# --------------------------------------------------------------------------- the scheduler


def _execute(study: Study, cfg: StudyConfig, path: Path) -> Path:
    clear_cache()  # no cached data or values from an earlier study in this process (the files may differ)
    grid = study.cells(cfg)
    keys = [c.key for c in grid]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{study.study_name}: two cells share a key")
    doc = config_doc(cfg)
    store = CellStore(path, _sha(doc))
    store.sweep()
    rows = {c.key: rec[0] for c in grid if (rec := store.load(c.key))}
    for key in _unreadable(store, grid, rows):
        print(f"cell {key}: its stored record cannot be used (corrupt, cut short or of another config); "
              "it will run again", file=sys.stderr, flush=True)
    needs = {c.key: [d.key for d in study.needs(cfg, c)] for c in grid}
    t0, started = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M:%S")
    ex, workers = _executor(cfg, sum(k not in rows for k in keys))
    progress = _Progress(len(grid), len(rows), workers)
    failed: dict[str, str] = {}
    todo = [c for c in grid if c.key not in rows]
    tracker = tracking.start(cfg.tracking, cfg.tracking_uri, path.name, {"study": study.study_name, **doc},
                             tags={"aelab.kind": "study", "aelab.run_dir": str(path.resolve())}, folder=path)
    ended = "FAILED"  # how the tracker's run ends unless every cell was tried
    try:
        with _interruptible():
            _run_cells(study, grid, todo, needs, rows, failed, ex, store, doc, path, progress, tracker)
        ended = ""
    except (KeyboardInterrupt, TrainingInterrupted):
        ended = "KILLED"
        raise StudyInterrupted(f"interrupted: {len(rows)} of {len(grid)} cells are stored; "
                               f"continue with `aelab study --resume {path}`") from None
    finally:  # whatever stopped the loop, the workers stop and the tracker says how the study ended
        ex.close(cancel=bool(ended))
        progress.close()
        if ended:
            tracker.finish(ended)
    _log_session(path, started, t0, workers, cfg.executor)
    blocked = [c.key for c in todo]
    if failed or blocked:
        tracker.finish("FAILED")
        shown = [f"{k} ({v})" for k, v in failed.items()] + [f"{k} (needs a failed cell)" for k in blocked]
        raise StudyFailed(f"{len(shown)} of {len(grid)} cells did not finish: {'; '.join(shown)}. The other "
                          f"cells are stored; retry with `aelab study --resume {path}`")
    return _summarize(study, cfg, path, Results([rows[k] for k in keys]), len(grid), tracker)


def _run_cells(study, grid, todo, needs, rows, failed, ex, store, doc, path, progress, tracker) -> None:
    """Submit every cell whose needs are stored while the executor has room; store what comes back."""
    folder = None if isinstance(ex, RayExecutor) else str(path)  # Ray: the driver stores each cell
    while True:
        ready = [c for c in todo if all(d in rows for d in needs[c.key])]
        for c in ready[:max(ex.capacity - ex.in_flight, 0)]:
            todo.remove(c)
            ex.submit(study.study_name, doc, c.key, {d: rows[d] for d in needs[c.key]}, folder, store.config_sha)
        if not ex.in_flight:  # all done, or what is left needs a failed cell
            return
        for o in ex.wait():
            _finish(o, grid, store, rows, failed, progress, study.headline)
            if o.ok:  # a child run of the study's MLflow run
                tracker.log_cell(o.key, next(c for c in grid if c.key == o.key).record(), o.row)


@contextlib.contextmanager
def _interruptible():
    """Ctrl-C (SIGINT) stops the study even where the parent left it ignored (a shell's `cmd &`, some
    test runners): a study is long, and the signal is how a user asks it to stop and keep its cells."""
    main = threading.current_thread() is threading.main_thread()
    saved = signal.getsignal(signal.SIGINT) if main else None
    if main and saved == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if main and saved == signal.SIG_IGN:
            signal.signal(signal.SIGINT, saved)


def _finish(o: Outcome, grid, store: CellStore, rows, failed, progress, headline: str) -> None:
    if o.ok and o.row is None:  # Ray: the driver stores what the task returned
        cell = next(c for c in grid if c.key == o.key)
        stored = store_cell(store, o.key, cell.record(), o.result, o.meta)
        o.ok, o.row, o.error = stored.ok, stored.row, stored.error
    if o.ok:
        rows[o.key] = o.row
        failed.pop(o.key, None)
    else:
        failed[o.key] = o.error
        try:
            store.fail(o.key, o.error, o.seconds)
        except AelabError:  # the disk is full: the study's last line still names the cell and why
            pass
    progress.cell(o, headline)


def _executor(cfg: StudyConfig, todo: int):
    """The executor for this config and machine, and its number of workers."""
    from ..data.device import pick_device

    device = pick_device(cfg.train.device)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    devices = [f"cuda:{i}" for i in range(gpus)] if device.index is None and gpus else \
        ([str(device)] if gpus else [])
    workers = cfg.workers or (4 * len(devices) if devices else max(1, usable_cores() // cfg.threads))
    workers = max(1, min(workers, todo or 1))
    if cfg.executor == "ray":
        return RayExecutor(cfg.ray_address, cfg.threads, cfg.gpus_per_cell, cfg.workers, cfg.train.device), workers
    if workers == 1:
        return InlineExecutor(cfg.threads, devices), 1
    return PoolExecutor(workers, cfg.threads, devices), workers


def _summarize(study: Study, cfg: StudyConfig, path: Path, results: Results, cells: int,
               tracker: tracking.Tracker) -> Path:
    metrics = study.summarize(cfg, results, path)
    from .lead import answer  # the report's lead: the main table with statuses, every arm's curves

    metrics["answer"] = answer(study.headline, results, path)
    commits = sorted({p["git_commit"] for p in CellStore(path, _sha(config_doc(cfg))).provenance().values()})
    metrics["meta"] = {"study": study.study_name, "seed": cfg.seed, "seeds": cfg.seeds, "cells": cells,
                       "aelab_version": __version__, "git_commits": commits,  # those the cells came from
                       "torch": torch.__version__, "finished": True}
    atomic_write_text(path / "metrics.json", json.dumps(metrics, indent=2, default=float))
    write_report(path)
    tracker.log_metrics(metrics)
    tracker.log_artifacts(path, ("report.html", "metrics.json", "config.json", "study.json", "figures"))
    tracker.finish()
    return path


def _write_session(path: Path, doc: dict) -> None:
    atomic_write_text(path / "study.json", json.dumps(doc, indent=2))


def _log_session(path: Path, started: str, t0: float, workers: int, executor: str) -> None:
    """study.json: one entry per session (start, wall seconds, workers); train_seconds sums them."""
    doc = read_session(path)
    doc["sessions"].append({"started": started, "wall_seconds": time.perf_counter() - t0,
                            "workers": workers, "executor": executor, "git_commit": code_version()["git_commit"]})
    doc["train_seconds"] = sum(s["wall_seconds"] for s in doc["sessions"])
    _write_session(path, doc)


class _Progress:
    """A bar over cells on a terminal (done/total, ETA from finished cells); a line per finished cell."""

    def __init__(self, total: int, done: int, workers: int):
        self.total, self.done, self.workers, self.seconds = total, done, workers, []
        self.bar = tqdm(total=total, initial=done, unit="cell", dynamic_ncols=True, leave=False) \
            if sys.stderr.isatty() else None

    def cell(self, o: Outcome, headline: str) -> None:
        self.done += o.ok
        self.seconds.append(o.seconds)
        shown = ""
        if o.ok and headline and isinstance((o.row or {}).get(headline), (int, float)):
            shown = f"  {headline}={o.row[headline]:.4g}"
        left = (self.total - self.done) * (sum(self.seconds) / len(self.seconds)) / self.workers
        line = (f"[{self.done}/{self.total}] {o.key}  {o.seconds:.1f} s{shown}" if o.ok
                else f"[failed] {o.key}: {o.error}") + f"  (ETA {left / 60:.1f} min)"
        if o.ok and (o.row or {}).get("status") == "collapsed":  # say so as it finishes, not in the report only
            line += f"\nwarning: {o.key} collapsed ({o.row.get('collapse', 'see its cell')}): its output carries no information"
        if self.bar is not None:
            self.bar.update(int(o.ok))
            tqdm.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
