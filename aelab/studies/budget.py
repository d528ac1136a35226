"""Training budgets in optimiser steps, and the validation curve and status every training cell stores.

Every arm of every study trains a stated number of optimiser steps at a stated batch size, whatever the
size of the data (a small set gets more passes, not fewer updates); the study's `budget` multiplier
scales them all (`quick=true` presets are fractions). While a cell trains, its curve is read at ~16
points (`POINTS`) and stored as `curve` (k, 2: step, the metric it selects on), with the `status`
that `aelab.convergence` computes from it (README, Studies: budgets and convergence).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..config import TrainConfig
from ..convergence import cell_status
from ..errors import ConfigError

POINTS = 16  # curve points per training run: enough for a slope and its noise, cheap to evaluate
# A cell training at least this many steps checkpoints each pass into its workdir (CellContext), so a
# killed study resumes it from its last pass; a shorter one (minutes at most) simply runs again.
CHECKPOINT_STEPS = 2000
PROBE_ROWS = 1000  # training images a cell without a validation split evaluates its loss on


@dataclass
class ArmBudget:
    """One arm's budget: `steps` at `batch` (the config's, before the `budget` multiplier), the paper's
    step count where it states one, which cells train it (arm names starting with a prefix in `match`)
    and how to build one training step of it for the plan's timed probe: `probe(splits)` ->
    (model, training data, TrainConfig)."""

    arm: str
    steps: int
    batch: int
    paper: int | None = None
    paper_note: str = ""
    match: tuple[str, ...] = ()
    probe: Callable[[Any], tuple[Any, Any, TrainConfig]] | None = None

    def owns(self, arm: str) -> bool:
        """The arm's own cells: its name exactly, or any name starting with one of `match`."""
        return arm == self.arm or any(arm.startswith(m) for m in self.match)


def model_probe(build: Callable[[tuple], Any], tcfg: TrainConfig, labelled: bool = False):
    """A probe for `ArmBudget`: a fresh `build(shape)` trained on the training split (its labelled rows)."""
    def probe(splits):
        data = splits.train.labelled() if labelled else splits.train
        return build(tuple(data.x.shape[1:])), data, tcfg
    return probe


def status_counts(results) -> dict[str, dict[str, int]]:
    """{arm: {status: cells}} of a study's stored cells (metrics["status"])."""
    from ..convergence import count_statuses

    return count_statuses(results)


def scaled(budget: float, steps: int) -> int:
    """`steps` times the study's budget multiplier, at least one step."""
    return max(1, round(steps * budget))


def check_steps(**steps: int) -> None:
    """ConfigError naming the first arm budget below one step."""
    for name, n in steps.items():
        if int(n) <= 0:
            raise ConfigError(f"{name}={n}: an arm needs at least 1 optimiser step; raise it (or the study's "
                              "budget multiplier)")


def train_cfg(base: TrainConfig, steps: int, budget: float = 1.0, **changes: Any) -> TrainConfig:
    """`base` for `steps` (times `budget`) optimiser steps, evaluated at ~POINTS points, quietly."""
    n = scaled(budget, steps)
    return dataclasses.replace(base, steps=n, eval_every=max(1, n // POINTS), progress="off", **changes)


def probe_rows(data, rows: int = PROBE_ROWS):
    """A fixed sample of `data` (its first rows) to read a curve on when a cell has no validation split:
    the training objective on seen images, which still shows whether training has flattened."""
    import torch

    return data.subset(torch.arange(min(rows, len(data)), device=data.device))


def checkpointing(workdir, steps: int) -> tuple[Any, bool, list[dict]]:
    """(run_dir for `fit`, whether to resume, the curve points stored so far) for a cell of `steps`
    steps: no run_dir below CHECKPOINT_STEPS or without a workdir; resume where a checkpoint is left."""
    from pathlib import Path

    from ..checkpoint import read_training
    from ..engine import CHECKPOINT

    if workdir is None or steps < CHECKPOINT_STEPS:
        return None, False, []
    path = Path(workdir) / CHECKPOINT
    if not path.exists():
        Path(workdir).mkdir(parents=True, exist_ok=True)
        return workdir, False, []
    return workdir, True, list(read_training(path)[1]["state"].get("evals", []))


class Curve:
    """An `on_eval` callback collecting (step, metric) points; `metric(model)` may compute the value
    (a validation accuracy), else it is read from the point (`key`, e.g. "val.loss")."""

    def __init__(self, key: str = "val.loss", higher_is_better: bool = False,
                 metric: Callable[[], float] | None = None):
        self.key, self.higher, self.metric, self.points = key, higher_is_better, metric, []

    def __call__(self, point: dict) -> None:
        if self.metric is not None:
            point[self.key] = self.metric()
        v = point[self.key]
        self.points.append((point["step"], float(sum(v) if isinstance(v, list) else v)))

    def array(self) -> np.ndarray:
        return np.asarray(self.points, dtype=np.float64).reshape(-1, 2)

    def result(self, collapse: str | None = None) -> dict[str, Any]:
        """The cell's `curve`, `status` and, when a detector fired, why (`collapse`)."""
        out = {"curve": self.array(), "status": cell_status(self.array(), self.higher, collapse)}
        return out | ({"collapse": collapse} if collapse else {})


def kl_per_dim(vae, data) -> np.ndarray:
    """Mean KL(q(z|x) || N(0, I)) of each latent dimension over `data` (nats): the VAE collapse input."""
    import torch

    with torch.inference_mode():
        was = vae.training
        vae.eval()
        mu, logvar = vae.posterior(data.batch(slice(0, len(data)))["x"])
        vae.train(was)
    return (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).mean(0).cpu().numpy()
