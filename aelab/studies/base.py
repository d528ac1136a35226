"""What a study is: a config, a grid of cells, a function that runs one cell, a summary of the stored cells.

A study declares its grid as frozen `Cell` records (arm, seed, size, ...): each cell's work is a pure
function of its record and the study config, so cells can run in any order, in any process, on any
machine, and a killed study resumes by running only the cells whose results are not stored yet
(`runner.py`). The summary, its verdicts and its figures are computed from the stored results alone,
as tidy rows (one per cell, like scikit-learn's `cv_results_`), never from string keys (STYLE 17).
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from ..config import DataConfig, TrainConfig
from ..errors import ConfigError

_STUDIES: dict[str, type] = {}


@dataclass
class StudyConfig:
    """Fields every study has; a study subclasses it with its own."""

    name: str = ""  # run folder name under out_dir ("" = <study>-<data>)
    seed: int = 0  # first seed; seed i of the study is seed + i
    seeds: int = 3  # repeats of every arm, paired across arms
    out_dir: str = "runs"
    quick: bool = False  # a smaller preset that runs in minutes (applied before config.json is written)
    # multiplies every arm's optimiser steps (rounded, at least 1): 1.0 = the config's steps; quick
    # presets are fractions (README, Studies: budgets)
    budget: float = 1.0
    # How cells run; none of these changes a result, so a resume may change them (runner.EXECUTION_KEYS).
    workers: int = 0  # cells at once in worker processes; 0 = auto: one per CPU core, or 4 per GPU
    executor: Literal["local", "ray"] = "local"  # ray: each cell a task on a Ray cluster
    ray_address: str = ""  # "" = $RAY_ADDRESS, else a local Ray instance
    gpus_per_cell: float = 1.0  # Ray, on GPU clusters: the GPU share of a cell (fractions allowed)
    # torch threads per cell on the CPU. Part of the result: oneDNN convolutions round differently with
    # another thread count (measured), so it is fixed per cell, not derived from the worker count.
    threads: int = 1
    tracking: Literal["none", "mlflow"] = "none"  # mlflow: a parent run, a child run per cell (aelab.tracking)
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else ./mlruns
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        if self.seeds <= 0:
            raise ConfigError("seeds must be > 0")
        if not self.budget > 0:  # NaN too
            raise ConfigError(f"budget={self.budget}: the step multiplier must be > 0 (1.0 = the config's steps)")
        if self.workers < 0 or self.threads <= 0 or self.gpus_per_cell <= 0:
            raise ConfigError("workers must be >= 0 (0 = auto), threads > 0 and gpus_per_cell > 0")
        if self.data.stream:  # studies take subsets, probes and whole-set codes in memory
            raise ConfigError("data.stream applies to `aelab train` and `aelab eval`; studies hold their data "
                              "in memory: leave data.stream=false")
        self.data.check()
        self.train.check()


@dataclass(frozen=True)
class Cell:
    """One unit of a study's grid. Subclass it (frozen) to add axes; the key names every field."""

    arm: str
    seed: int = 0  # cfg.seed + i: a cell's randomness derives from its record alone
    n: int = 0  # a size axis (training images, labels, bits, ...); 0 = none or all

    @property
    def key(self) -> str:
        """A stable, readable file name: `arm.n100.seed0` (the other axes by name and value where they are
        not at their default, then the seed)."""
        axes = [f.name for f in dataclasses.fields(self)
                if f.name not in ("arm", "seed") and getattr(self, f.name) != f.default] + ["seed"]
        parts = [self.arm] + [f"{a}{getattr(self, a)}" for a in axes]
        return re.sub(r"[^A-Za-z0-9.=+_-]", "_", ".".join(str(p) for p in parts))

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Results:
    """The stored cells as tidy rows `{cell fields..., result keys..., array names...}`, in grid order."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def where(self, **axes: Any) -> "Results":
        return Results([r for r in self.rows if all(r.get(k) == v for k, v in axes.items())])

    def column(self, metric: str, **axes: Any) -> list[Any]:
        """`metric` of the matching rows, ordered by seed (paired across arms by position)."""
        rows = sorted(self.where(**axes).rows, key=lambda r: r.get("seed", 0))
        return [r[metric] for r in rows]

    def one(self, **axes: Any) -> dict[str, Any]:
        found = self.where(**axes).rows
        if len(found) != 1:
            raise KeyError(f"{len(found)} cells match {axes}, expected one")
        return found[0]

    def values(self, axis: str) -> list[Any]:
        """The distinct values of `axis` in grid order."""
        return list(dict.fromkeys(r[axis] for r in self.rows if axis in r))


@dataclass
class CellContext:
    """What a cell may use besides its record and the config: its device, the stored results of the
    cells it needs, and a per-process cache (data sets are loaded once per worker, not once per cell).
    `scope` (the study config's hash) is part of every cache key: one process may run cells of several
    studies (the Python API, workers=1, a reused Ray worker), and a value made for one config must
    never answer for another. `workdir` (a folder of the study's, or None) is where a long cell keeps
    its training checkpoint: a killed study's `--resume` continues such a cell from its last pass, not
    from step 0 (a paper-budget ladder cell trains for hours); the runner deletes it once the cell is stored."""

    device: Any
    deps: dict[str, dict[str, Any]] = field(default_factory=dict)
    scope: str = ""
    workdir: Path | None = None

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        key = (self.scope, key)
        if key not in _CACHE:
            _CACHE[key] = make()
        return _CACHE[key]

    def dataset(self, cfg: StudyConfig):
        return dataset_of(cfg)

    def data(self, cfg: StudyConfig, val_fraction: float | None = None, seed: int | None = None):
        """The data set's `Splits` on this cell's device: validation rows held out by `val_fraction`
        (default `data.val_fraction`) with `seed` (default the study's seed)."""
        from ..data.device import to_device

        vf = cfg.data.val_fraction if val_fraction is None else val_fraction
        s = cfg.seed if seed is None else seed
        ds = self.dataset(cfg)
        key = ("splits", cfg.data.name, cfg.data.data_dir, vf, s, str(self.device))
        return self.cached(key, lambda: to_device(ds, self.device, vf, s))


_CACHE: dict[Any, Any] = {}


def clear_cache() -> None:
    """Forget every cached data set and value (a study starts with none: files may have changed)."""
    _CACHE.clear()


def dataset_of(cfg: StudyConfig):
    """The study's data set, loaded once per process (a grid may depend on its size)."""
    from ..data import load_dataset

    d = cfg.data
    key = ("dataset", d.name, d.data_dir, d.download)
    if key not in _CACHE:
        _CACHE[key] = load_dataset(d.name, d.data_dir or None, d.download)
    return _CACHE[key]


class Study:
    """Base of every registered study (see the module docstring); subclasses set `Config`."""

    Config: type[StudyConfig] = StudyConfig
    study_name = "?"
    headline = ""  # the result key shown in the line printed for each finished cell

    def preset(self, cfg: StudyConfig) -> StudyConfig:
        """The `quick=true` preset: a smaller config (what is stored is what runs)."""
        return cfg

    def cells(self, cfg: StudyConfig) -> list[Cell]:
        raise NotImplementedError

    def budgets(self, cfg: StudyConfig) -> list:
        """Each arm's `budget.ArmBudget` (steps at budget 1.0, batch, the paper's steps, the plan's probe):
        read by `aelab study --plan` and the README's steps tables."""
        return []

    def needs(self, cfg: StudyConfig, cell: Cell) -> list[Cell]:
        """Cells whose stored results `cell` reads through `ctx.deps` (tuning before the arms)."""
        return []

    def run_cell(self, cfg: StudyConfig, cell: Cell, ctx: CellContext) -> dict[str, Any]:
        raise NotImplementedError

    def summarize(self, cfg: StudyConfig, results: Results, out: Path) -> dict[str, Any]:
        raise NotImplementedError


def register_study(name: str):
    """Class decorator: make a study available to `aelab study NAME` and `run_study`."""

    def wrap(cls):
        if name in _STUDIES:
            raise ValueError(f"study '{name}' is registered twice")
        cls.study_name = name
        _STUDIES[name] = cls
        return cls

    return wrap


def get_study(name: str):
    if name not in _STUDIES:
        raise ConfigError(f"unknown study '{name}'; choose one of: {', '.join(study_names())}")
    return _STUDIES[name]


def study_names() -> list[str]:
    return sorted(_STUDIES)


def describe(name: str) -> str:
    """The first line of the study's module docstring."""
    doc = sys.modules[get_study(name).__module__].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def state_arrays(model) -> dict[str, Any]:
    """A trained model's weights as a cell result (`w.<name>` arrays), for cells that build on it."""
    return {f"w.{k}": v for k, v in model.state_dict().items()}


def load_state_arrays(model, row: dict[str, Any]):
    """`model` with the weights a cell stored with `state_arrays`; returns the model."""
    import torch

    model.load_state_dict({k[2:]: torch.as_tensor(v) for k, v in row.items() if k.startswith("w.")})
    return model


def seeds_of(cfg: StudyConfig) -> list[int]:
    return [cfg.seed + i for i in range(cfg.seeds)]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
