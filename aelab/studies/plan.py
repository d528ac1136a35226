"""A study's plan before it runs: its grid, each arm's steps and batch, and the wall time they will take.

    aelab study NAME [CONFIG.toml] [key=value ...] --plan     # writes nothing under out_dir
    aelab study --status RUN                                  # also: the estimate for the cells left

The estimate comes from a timed probe on this machine: for each arm that trains (`Study.budgets`), a
few dozen optimiser steps of its model at its batch size (`PROBE_STEPS`, after `WARM` warm-up steps,
with the study's torch threads), plus one validation evaluation times the curve's points, timed while
`workers - 1` other processes train the same arm (`busy`): cells that run at once share the cores'
caches and memory bandwidth, and a probe timed alone came out 1.5-1.9x too fast for 2 workers on 2
cores. An arm's
seconds are cells x (its steps x seconds per step + evaluations); the study's wall time is their sum
over the workers that run at once. What cells do besides training (t-SNE, retrieval rankings,
scikit-learn baselines, figures) is not in it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..config import make_config
from ..data.device import pick_device, to_device
from .base import Cell, Study, StudyConfig, dataset_of, get_study, usable_cores
from .budget import POINTS, ArmBudget, scaled

WARM, PROBE_STEPS = 10, 30  # warm-up steps (allocation, oneDNN kernel choice), then the timed ones


def plan_study(name: str, config_file: str | Path | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """The plan of study `name` with this config (presets applied as `run_study` applies them)."""
    cls = get_study(name)
    study = cls()
    cfg = make_config(cls.Config(), config_file, list(overrides))
    if cfg.quick:
        cfg = study.preset(cfg)
        cfg.check()
    return estimate(study, cfg, study.cells(cfg))


def estimate(study: Study, cfg: StudyConfig, cells: list[Cell], done: dict[str, int] | None = None) -> dict[str, Any]:
    """Per arm: cells, steps (after the multiplier), batch, the paper's steps, seconds per step and the
    estimated seconds; in all: cell-seconds and wall seconds for the workers that will run. `done`:
    {cell key: steps} already trained by cells that resume from a checkpoint (not counted again)."""
    done = done or {}
    budgets = study.budgets(cfg)
    owner = {c.key: next((b.arm for b in budgets if b.owns(c.arm)), c.arm.split(":")[0]) for c in cells}
    splits = to_device(dataset_of(cfg), pick_device(cfg.train.device), cfg.data.val_fraction, cfg.seed)
    arms: dict[str, dict[str, Any]] = {}
    workers = max(1, min(cfg.workers or max(1, usable_cores() // cfg.threads), len(cells) or 1))
    for b in budgets:
        n = sum(o == b.arm for o in owner.values())
        if not n:
            continue
        steps = scaled(cfg.budget, b.steps) if b.steps else 0
        if steps and b.probe:
            with busy(study.study_name, cfg, b.arm, workers - 1):
                per_step, per_eval = probe(b, splits, cfg.threads)
        else:
            per_step, per_eval = 0.0, 0.0
        trained = sum(done.get(k, 0) for k, o in owner.items() if o == b.arm)
        seconds = n * (steps * per_step + POINTS * per_eval) - trained * per_step
        arms[b.arm] = {"cells": n, "steps": steps, "batch": b.batch, "paper_steps": b.paper, "note": b.paper_note,
                       "seconds_per_step": per_step, "seconds": seconds, "probed": bool(steps and b.probe),
                       "done_steps": trained}
    for o in sorted(set(owner.values()) - set(arms)):  # cells no budget names: counted, not timed
        arms[o] = {"cells": sum(v == o for v in owner.values()), "steps": 0, "batch": 0, "paper_steps": None,
                   "note": "", "seconds_per_step": 0.0, "seconds": 0.0, "probed": False}
    total = sum(a["seconds"] for a in arms.values())
    return {"study": study.study_name, "cells": len(cells), "budget": cfg.budget, "workers": workers,
            "threads": cfg.threads, "arms": arms, "cell_seconds": total, "wall_seconds": total / workers}


@contextlib.contextmanager
def busy(study_name: str, cfg: StudyConfig, arm: str, n: int):
    """`n` other processes training `arm` of this study while the block runs (each ready before it
    starts), as the study's other workers will be; they stop, or die with this process, after it."""
    if n <= 0:
        yield
        return
    from .runner import config_doc

    from .executors import worker_context

    ctx = worker_context()
    ready, stop = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_train_until, args=(study_name, config_doc(cfg), arm, cfg.threads, ready, stop,
                                                    os.getpid()), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=600)
        yield
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()


def _train_until(study_name: str, doc: dict, arm: str, threads: int, ready, stop, parent: int) -> None:
    """A `busy` process: the arm's probe model trained in short fits until `stop` is set."""
    from ..engine import fit
    from .executors import _die_with
    from .runner import config_from_doc

    _die_with(parent)
    torch.set_num_threads(threads)
    cls = get_study(study_name)
    cfg = config_from_doc(cls, doc)
    b = next(b for b in cls().budgets(cfg) if b.arm == arm)
    model, data, tcfg = b.probe(to_device(dataset_of(cfg), pick_device(cfg.train.device), cfg.data.val_fraction,
                                          cfg.seed))
    short = dataclasses.replace(tcfg, steps=WARM, eval_every=0, progress="off")
    fit(model, data, short)
    ready.put(os.getpid())
    while not stop.is_set():
        fit(model, data, short)


def probe(b: ArmBudget, splits, threads: int) -> tuple[float, float]:
    """(seconds per optimiser step, seconds per validation evaluation) of arm `b` on this machine."""
    from ..engine import evaluate, fit

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model, data, tcfg = b.probe(splits)
        stamps: list[float] = []
        cfg = dataclasses.replace(tcfg, steps=WARM + PROBE_STEPS, eval_every=WARM, progress="off")
        fit(model, data, cfg, on_eval=lambda point: stamps.append(time.perf_counter()) if point["step"] in
            (WARM, WARM + PROBE_STEPS) else None)
        per_step = (stamps[-1] - stamps[0]) / PROBE_STEPS
        val = splits.val if len(splits.val) else splits.train
        t0 = time.perf_counter()
        evaluate(model, val.subset(torch.arange(min(len(val), 1000), device=val.device)))
        return per_step, time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)


def left(path: str | Path) -> dict[str, Any]:
    """The same estimate for the cells of study folder `path` that are not stored yet."""
    from .runner import _sha, config_doc, config_from_doc, in_progress, read_study_config
    from .store import CellStore

    name, stored = read_study_config(Path(path))
    cls = get_study(name)
    cfg = config_from_doc(cls, stored)
    study = cls()
    store = CellStore(Path(path), _sha(config_doc(cfg)))
    todo = [c for c in study.cells(cfg) if not store.load(c.key)]
    return estimate(study, cfg, todo, in_progress(Path(path), [c.key for c in todo]))


def plan_text(p: dict[str, Any], title: str = "plan") -> str:
    """The plan as lines: one per arm, then the total."""
    busy = f" (each arm timed while {p['workers'] - 1} more train it)" if p["workers"] > 1 else ""
    lines = [f"{title}: study {p['study']}, {p['cells']} cells, budget x{p['budget']:g}, "
             f"{p['workers']} workers x {p['threads']} threads{busy}"]
    for arm, a in p["arms"].items():
        paper = f", paper {a['paper_steps']:,}" if a["paper_steps"] else (f" ({a['note']})" if a["note"] else "")
        steps = f"{a['steps']:,} steps at batch {a['batch']}{paper}" if a["steps"] else (a["note"] or "no training")
        timing = f"{a['seconds_per_step'] * 1e3:.1f} ms/step, ~{a['seconds'] / 60:.1f} cell-min" if a["probed"] else "not timed"
        if a.get("done_steps"):
            timing += f"; {a['done_steps']:,} steps already trained"
        lines.append(f"  {arm:24s} {a['cells']:4d} cells  {steps}  [{timing}]")
    lines.append(f"estimated wall time: {p['wall_seconds'] / 60:.1f} min ({p['cell_seconds'] / 60:.1f} cell-min over "
                 f"{p['workers']} workers; training and validation only)")
    return "\n".join(lines)


def steps_table(name: str) -> str:
    """The README's steps table of study `name` at its defaults: each arm's steps and batch, the paper's."""
    cls = get_study(name)
    cfg = cls.Config()
    rows = ["| arm | steps here | batch | the paper's steps |", "|---|---|---|---|"]
    for b in cls().budgets(cfg):
        paper = f"{b.paper:,}" if b.paper else (b.paper_note or "—")
        rows.append(f"| {b.arm} | {f'{b.steps:,}' if b.steps else '—'} | {b.batch or '—'} | {paper} |")
    return "\n".join(rows)
