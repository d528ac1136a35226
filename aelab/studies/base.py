"""The study registry and runner: folder, config, metrics and report around a study's `run`."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_write_text
from ..batched import fit_seeds, unsupported
from ..config import DataConfig, TrainConfig, make_config, to_dict
from ..data.device import DeviceData
from ..engine import fit
from ..errors import ConfigError
from ..report import write_report
from ..runs import claim_run_dir, git_commit

_STUDIES: dict[str, type] = {}


@dataclass
class StudyConfig:
    """Fields every study has; a study subclasses it with its own."""

    name: str = ""  # run folder name under out_dir ("" = <study>-<data>)
    seed: int = 0  # first seed; seed i of the study is seed + i
    seeds: int = 3  # repeats of every arm, paired across arms
    out_dir: str = "runs"
    quick: bool = False  # a smaller preset that runs in minutes
    # train the seeds of one arm as one vmapped model (aelab.batched): auto = on CUDA only, since on
    # the CPU it measured slower than one after another (benchmarks/bench_seeds.py, RESULTS.md)
    batch_seeds: Literal["auto", "on", "off"] = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        if self.seeds <= 0:
            raise ConfigError("seeds must be > 0")
        if self.data.stream:  # studies take subsets, probes and whole-set codes in memory
            raise ConfigError("data.stream applies to `aelab train` and `aelab eval`; studies hold their data "
                              "in memory: leave data.stream=false")
        self.data.check()
        self.train.check()


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


_T0 = [time.perf_counter()]


def note(msg: str) -> None:
    """One progress line on stderr, with the time since the study started (long studies say where they are)."""
    print(f"[{time.perf_counter() - _T0[0]:7.0f} s] {msg}", file=sys.stderr, flush=True)


def each_seed(cfg: StudyConfig, what: str):
    """Yield (i, seed) over the study's seeds, with a progress line after each one."""
    for i in range(cfg.seeds):
        yield i, cfg.seed + i
        note(f"{what}: seed {i + 1}/{cfg.seeds} done")


def train_seeds(cfg: StudyConfig, build: Callable[[], nn.Module], data: DeviceData, train: TrainConfig,
                seeds: list[int]) -> list[nn.Module]:
    """One trained model per seed, all on the same data, each built under `torch.manual_seed(seed)`:
    as one batched model when `cfg.batch_seeds` says so and the model allows it (equal to the
    one-by-one runs up to float rounding, or in distribution where the model samples), else with `fit`."""
    on = cfg.batch_seeds == "on" or (cfg.batch_seeds == "auto" and data.device.type == "cuda")
    if on and len(seeds) > 1 and unsupported(build(), train) is None:
        return fit_seeds(build, seeds, data, train)[0]
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(build())
        fit(models[-1], data, train, seed=s)
    return models


def run_study(name: str, config_file: str | Path | None = None, overrides: list[str] = (),
              force: bool = False) -> Path:
    """Run study `name` end to end into `out_dir/<name>`; returns the folder (with report.html)."""
    cls = get_study(name)
    cfg = make_config(cls.Config(), config_file, list(overrides))
    folder = cfg.name or f"{name}-{cfg.data.name.replace(':', '-').replace('/', '_')}"
    path = claim_run_dir(Path(cfg.out_dir) / folder, force)
    atomic_write_text(path / "config.json", json.dumps({"study": name, **to_dict(cfg)}, indent=2))
    commit, t0 = git_commit(), time.perf_counter()  # the code that runs, not what HEAD is at the end
    _T0[0] = t0
    metrics: dict[str, Any] = cls().run(cfg, path)
    metrics["meta"] = {"study": name, "seed": cfg.seed, "seeds": cfg.seeds, "aelab_version": __version__,
                       "git_commit": commit, "torch": torch.__version__,
                       "train_seconds": time.perf_counter() - t0, "finished": True}
    atomic_write_text(path / "metrics.json", json.dumps(metrics, indent=2, default=float))
    write_report(path)
    return path
