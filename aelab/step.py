"""One engine step: each player whose turn it is takes its optimiser steps (STYLE 5).

A model lists its players (`model.players()`); each gets its own optimiser (and, in fp16, its own
loss scaler) and minimises `model(batch, player)["loss"]`. The loss may be a scalar or a vector of
independent losses (the seeds of an `aelab.batched.SeedStack`): the step minimises their sum, whose
gradient for each seed's weights is that seed's own gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import distributed
from .amp import Precision, choose
from .config import TrainConfig
from .errors import AelabError


class TrainingDiverged(AelabError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class FitState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    epoch: int = 0  # epochs completed
    step: int = 0  # engine steps completed
    best: float = math.inf  # best validation loss (early stopping)
    bad_epochs: int = 0
    skipped: int = 0  # non-finite steps skipped (train.max_bad_steps), in all
    epoch_skipped: int = 0  # ... in the current epoch: its mean is over the other steps
    stopped_early: bool = False
    batch: int = 0  # batches done in the current epoch (a mid-epoch checkpoint resumes there)
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)  # validation points: step, val.* (curve)


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    kw = {"fused": True} if fused else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)


def diverged(where: str, terms: dict[str, Any], extra: str = "") -> TrainingDiverged:
    shown = ", ".join(f"{k}={_show(v)}" for k, v in terms.items())
    extra = f"{extra} " if extra else ""
    return TrainingDiverged(f"training diverged at {where} {extra}({shown}); the last good checkpoint "
                            "is untouched: lower train.lr, set train.grad_clip, or train.max_bad_steps")


def _show(v: Any) -> str:
    v = torch.as_tensor(v).detach().float()
    return f"{float(v):.4g}" if v.ndim == 0 else "[" + ", ".join(f"{x:.4g}" for x in v.tolist()) + "]"


def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], player: str) -> dict[str, torch.Tensor]:
    return model(batch, player)


class Stepper:
    """The players' optimisers, loss scalers and precision; `forward` may be swapped for a compiled one."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device,
                 precision: Precision | None = None):
        self.model, self.cfg = model, cfg
        self.players = model.players()
        fused = device.type in ("cuda", "cpu")  # fused Adam(W): one kernel for all tensors, fewer launches
        self.opts = {p.name: make_optimizer(p.params, cfg, fused) for p in self.players}
        self.precision = precision or choose(cfg.amp, device, model)
        self.scalers = {p.name: s for p in self.players if (s := self.precision.scaler()) is not None}
        self.forward: Callable[..., dict[str, torch.Tensor]] = _forward
        self.prefix = len(self.players) > 1
        self.sync_check = cfg.max_bad_steps > 0 or cfg.grad_clip > 0
        self.dist = distributed.current()  # one process: every call on it is a no-op

    def set_lr(self, lr: float) -> None:
        for p in self.players:
            for g in self.opts[p.name].param_groups:
                g["lr"] = lr * p.lr_scale

    def __call__(self, batch: dict[str, torch.Tensor], step: int, state: FitState) -> tuple[dict[str, torch.Tensor], bool]:
        """The logged terms of this step, and False if a non-finite step was skipped (max_bad_steps)."""
        logged: dict[str, torch.Tensor] = {}
        ok = True
        for p in self.players:
            if step % p.every:
                continue
            for _ in range(p.steps):
                with self.precision.autocast():
                    out = self.forward(self.model, batch, p.name)
                self.model.zero_grad(set_to_none=True)
                ok &= self._update(p, out, step, state)
            for k, v in out.items():
                logged[f"{p.name}.{k}" if self.prefix else k] = v.detach().float()
        return logged, ok

    def _update(self, p, out: dict[str, torch.Tensor], step: int, state: FitState) -> bool:
        """Backward and the optimiser step (through the loss scaler in fp16)."""
        opt, scaler, loss = self.opts[p.name], self.scalers.get(p.name), out["loss"].sum()
        (scaler.scale(loss) if scaler else loss).backward()
        self.dist.average_grads(p.params)  # data-parallel: the global batch's gradient
        if scaler and self.sync_check:
            scaler.unscale_(opt)  # clip and check the true gradients
        ok = self._finite_or_skip(p.params, out, step, state, scaled=scaler is not None)
        if ok:
            scaler.step(opt) if scaler else opt.step()  # the scaler skips a step with inf gradients itself
        if scaler:  # a skipped step was unscaled (ok is False only with the sync check): update may run
            scaler.update()
        return ok

    def _finite_or_skip(self, params: list, out: dict, step: int, state: FitState, scaled: bool) -> bool:
        """Clip, and with train.max_bad_steps skip non-finite steps (this check syncs with the host).
        In fp16 an inf gradient is the scaler's to handle (it lowers the scale); only the loss counts."""
        if not self.sync_check:
            return True
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip or math.inf)
        finite = torch.isfinite(out["loss"]).all()
        if not scaled:
            finite = finite & torch.isfinite(norm)
        if self.cfg.max_bad_steps and not bool(finite):
            state.skipped += 1
            if state.skipped > self.cfg.max_bad_steps:
                raise diverged(f"step {step}", out, f"after skipping {self.cfg.max_bad_steps} non-finite steps")
            return False
        return True
