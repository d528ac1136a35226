"""The training engine: `fit`, `evaluate` and `encode_all` for any registered model.

This is the one training loop. It never branches on the model's type (STYLE 5, 19): a model lists
its players (`step.Stepper` steps each on its own schedule), a `SeedStack` declares its seeds (the
feed gives it one batch per seed), and the same loop brings validation, early stopping, checkpoints,
resume, progress, data parallelism, mixed precision (`amp.py`) and compilation (`compile_cache.py`)
to all of them. The hot loop makes no host sync: losses are summed in device tensors and read once
per epoch (and once per progress interval when a bar is shown).
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from . import checkpoint as ckpt
from . import compile_cache, distributed
from .config import DataConfig, TrainConfig
from .data.device import DeviceData
from .errors import AelabError, DataError
from .feed import Feed, prepare  # noqa: F401 (prepare: re-exported)
from .progress import Progress
from .step import FitState, Stepper, TrainingDiverged, diverged, make_optimizer  # noqa: F401 (re-exported)

CHECKPOINT = "checkpoint.safetensors"
_Stepper = Stepper  # the name tests and older code use


class TrainingInterrupted(AelabError):
    """SIGINT/SIGTERM: a checkpoint was written and the run can be resumed."""

    exit_code = 130


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """The schedule as a pure function of the step, so resuming needs no scheduler state."""
    t = min(step / max(total, 1), 1.0)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "hold-linear":  # Rasmus et al. 2015: 100 epochs at lr, linear to 0 over the last 50
        return cfg.lr * min(1.0, 3 * (1 - t))
    if cfg.schedule == "onecycle":  # 30% linear warm-up from lr/25, then cosine down to lr/1e4
        if t < 0.3:
            return cfg.lr * (0.04 + 0.96 * t / 0.3)
        return cfg.lr * (1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (t - 0.3) / 0.7)))
    return cfg.lr


def _loss_term(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """This step's loss, summed over the players that stepped (keys `loss` or `<player>.loss`) and seeds."""
    loss = out.get("loss")
    if loss is not None and loss.ndim == 0:  # one player, one seed: no extra op in the hot loop
        return loss
    return sum(v.sum() for k, v in out.items() if k == "loss" or k.endswith(".loss"))


def _first_non_finite(trace: list[torch.Tensor], sums: dict[str, torch.Tensor], first_step: int,
                      epoch: int) -> str | None:
    """Where training diverged ("step N", or "epoch E" when only a logged term went bad), or None.
    A NaN or inf in any step's loss term stays in the epoch's sums, so checking once an epoch suffices."""
    bad = ~torch.isfinite(torch.stack(trace)) if trace else torch.zeros(1, dtype=torch.bool)
    if bool(bad.any()):
        return f"step {first_step + int(bad.int().argmax())}"
    if sums and not bool(torch.isfinite(torch.cat([v.float().reshape(-1) for v in sums.values()])).all()):
        return f"epoch {epoch + 1}"
    return None


def _py(total: torch.Tensor, n: int) -> float | list[float]:
    """A sum over n as a mean: a float, or a list for a stack's per-seed vector (one host sync)."""
    value = total.float().tolist()
    return [v / n for v in value] if isinstance(value, list) else value / n


def fit(model: torch.nn.Module, train: DeviceData, cfg: TrainConfig | None = None, *,
        val: DeviceData | None = None, seed: int = 0, augment: DataConfig | None = None,
        run_dir: str | Path | None = None, resume: bool = False, meta: dict | None = None,
        on_epoch: Callable[[dict], None] | None = None,
        on_eval: Callable[[dict], None] | None = None) -> list[dict[str, Any]]:
    """Train `model` on `train`; returns the per-epoch history. With `run_dir`, checkpoints every epoch
    (and on SIGINT/SIGTERM, mid-epoch), and `resume=True` continues exactly where it stopped.
    `train.steps` > 0 trains exactly that many optimiser steps (the last pass cut short). At every
    evaluation point (each pass, or every `train.eval_every` steps, and the final step) the point
    `{"step", "epoch", val.*}` goes to `on_eval` (which may add keys) and then to the loop's `evals`.
    A `SeedStack` trains its own seeds (`seed` is then unused); its history holds per-seed lists."""
    cfg = cfg or TrainConfig()
    cfg.check()
    _check_shape(model, train)
    if hasattr(model, "check_train"):  # a model that cannot train under some options says so
        model.check_train(cfg)
    loop = _Loop(model, train, cfg, val, seed, augment, run_dir, meta or {}, on_epoch, on_eval)
    if resume:
        loop.restore()
    return loop.run()


def _check_shape(model: torch.nn.Module, data: DeviceData) -> None:
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(data.x.shape[1:]) != tuple(expected):
        shape = "x".join(map(str, data.x.shape[1:]))
        raise DataError(f"images are {shape} (CxHxW) but the model was built for {'x'.join(map(str, expected))}; "
                        "train a model for this data set")


def _channels_last(model: torch.nn.Module) -> None:
    """Conv weights (4-D) in NHWC for faster oneDNN / cuDNN kernels; a stack's 5-D weights stay."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)


class _Loop:
    """The state of one `fit` call: the epoch loop, its checkpoints and its mid-epoch resume."""

    def __init__(self, model, train, cfg, val, seed, augment, run_dir, meta, on_epoch, on_eval=None):
        self.model, self.train, self.cfg, self.val = model, train, cfg, val
        self.run_dir, self.meta, self.on_epoch, self.on_eval = run_dir, meta, on_epoch, on_eval
        self.device = train.device
        model.to(self.device).train()
        if cfg.channels_last:
            _channels_last(model)
        self.stepper, self.state = Stepper(model, cfg, self.device), FitState()
        self.path = Path(run_dir) / CHECKPOINT if run_dir else None
        self.best_weights = None
        self.bsz = min(cfg.batch_size, len(train))
        self.per_epoch = len(train) // self.bsz  # drop the ragged last batch: static shapes for compile
        self.total = cfg.steps or cfg.epochs * self.per_epoch  # the schedule spans exactly these steps
        self.epochs = -(-self.total // self.per_epoch)  # passes: the last one cut short at `total`
        seeds = getattr(model, "seeds", None)  # a SeedStack's seeds; else this fit's one seed
        self.feed = Feed(train, cfg, augment, seeds or [seed], seeds is not None, self.bsz)
        self.partial: dict[str, torch.Tensor] = {}  # a mid-epoch checkpoint's loop tensors
        self.dist = distributed.current()
        if self.dist.active:  # same start everywhere; different noise draws (VAE sampling) per rank
            self.dist.check_batch(self.bsz)
            self.dist.broadcast_module(model)
            torch.manual_seed(seed * 7919 + self.dist.rank)

    def restore(self) -> None:
        s = self.stepper
        state, self.best_weights, self.partial = ckpt.load_training(self.path, self.model, s.opts, s.scalers)
        for k, v in state.items():
            setattr(self.state, k, v)

    def run(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        if cfg.compile == "on" or (cfg.compile == "auto" and self.device.type == "cuda"):
            shape = self.feed.batch_shape()
            self.stepper.forward = compile_cache.compiled(self.model, shape, self.device, str(self.stepper.precision))
        self.progress = Progress(cfg.progress, self.epochs, self.per_epoch, self.bsz)
        try:
            with _Signals() as self.signals:
                for epoch in range(self.state.epoch, self.epochs):
                    row = self._epoch(epoch)
                    self._end_epoch(epoch, row)
                    if self.state.stopped_early:
                        break
        finally:  # the bar is closed on the error path too
            self.progress.close()
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        return self.state.history

    def _epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over each seed's seeded permutation; the loss terms are summed on the device."""
        state = self.state
        self.feed.start_epoch(epoch, self.partial)
        sums = {k[5:]: v.to(self.device) for k, v in self.partial.items() if k.startswith("sums.")}
        self.partial = {}
        first_step = state.step  # the step of trace[0] (batch 0, or where a mid-epoch checkpoint resumes)
        trace: list[torch.Tensor] = []  # each step's loss, stacked and read at the end: no sync
        t0 = time.perf_counter()
        self.progress.start_epoch(epoch)
        end = min(self.per_epoch, self.total - epoch * self.per_epoch)  # the last pass stops at `total`
        for i in range(state.batch, end):
            self.stepper.set_lr(lr_at(self.cfg, state.step, self.total))
            out, ok = self.stepper(self.feed.batch(i), state.step, state)
            if ok:  # a skipped non-finite step (train.max_bad_steps) counts in no sum
                for k, v in out.items():
                    sums[k] = sums[k] + v if k in sums else v
                trace.append(_loss_term(out))
            else:
                state.epoch_skipped += 1
                trace.append(torch.zeros((), device=self.device))
            state.step += 1
            state.batch = i + 1
            self.progress.step(i, sums)
            if self._stop_requested():
                self._interrupted(sums, trace)
            if self.cfg.eval_every and state.step % self.cfg.eval_every == 0 and i + 1 < end:
                self._eval_point(epoch, None)  # a mid-pass curve point (pass ends are handled below)
        sums = self.dist.mean(sums)
        where = _first_non_finite(trace, sums, first_step, epoch)
        counted = max(end - state.epoch_skipped, 1)
        if self.dist.any(where is not None, self.device) and not self.cfg.max_bad_steps:
            raise diverged(where or "on another process", {k: v / counted for k, v in sums.items()})
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "step": state.step, "lr": lr_at(self.cfg, state.step - 1, self.total)}
        row.update({f"train.{k}": _py(v, counted) for k, v in sums.items()})
        row.update(time=seconds, samples_per_s=end * self.bsz / seconds, skipped=state.skipped)
        return row

    def _stop_requested(self) -> bool:
        # Under torchrun every rank must stop at the same step; agreeing costs a sync per step there.
        return self.dist.any(bool(self.signals.caught), self.device) if self.dist.active else bool(self.signals.caught)

    def _end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        self.dist.broadcast_module(self.model, buffers_only=True)  # BatchNorm statistics of rank 0
        every, step = self.cfg.eval_every, self.state.step
        # Passes shorter than eval_every (a training set of a few batches) validate only at its points:
        # 700 one-step passes must not mean 700 validations. Longer passes validate at each end, as before.
        if self.val is not None and (not every or self.per_epoch >= every or step % every == 0 or step >= self.total):
            row.update({f"val.{k}": v for k, v in evaluate(self.model, self.val).items()})
            self.best_weights = _early_stop(self.model, self.cfg, self.state, row, self.best_weights)
        if not every or step % every == 0 or step >= self.total or self.state.stopped_early:
            self._eval_point(epoch, row)
        self.state.history.append(row)
        self.state.epoch, self.state.batch, self.state.epoch_skipped = epoch + 1, 0, 0
        self.progress.end_epoch(row)
        self._save()
        if self.on_epoch:
            self.on_epoch(row)

    def _eval_point(self, epoch: int, row: dict[str, Any] | None) -> None:
        """A curve point at this step: the validation metrics (those of the pass's `row` at a pass end),
        whatever `on_eval` adds; kept in the state, so a resumed run has the whole curve."""
        point: dict[str, Any] = {"step": self.state.step, "epoch": epoch + (row is not None)}
        if row is not None:
            point.update({k: v for k, v in row.items() if k.startswith("val.")})
        elif self.val is not None:
            point.update({f"val.{k}": v for k, v in evaluate(self.model, self.val).items()})
        if self.on_eval:
            self.on_eval(point)
        self.state.evals.append(point)

    def _save(self, loop_tensors: dict[str, torch.Tensor] | None = None) -> None:
        if self.path is not None and self.dist.is_main:  # rank 0 writes; the others only compute
            s = self.stepper
            ckpt.save_training(self.path, self.model, s.opts, s.scalers, asdict(self.state), self.best_weights,
                               self.meta, loop_tensors or {})

    def _interrupted(self, sums: dict[str, torch.Tensor], trace: list[torch.Tensor]) -> None:
        """SIGINT/SIGTERM after a finished step: checkpoint mid-epoch (if the loss is still finite), stop."""
        name = signal.Signals(self.signals.caught).name if self.signals.caught else "a signal to another rank"
        if self.path is None:
            raise TrainingInterrupted(f"interrupted by {name} at step {self.state.step}")
        if _first_non_finite(trace, sums, 0, 0) is None:  # a diverged state is never saved
            self._save({**{f"sums.{k}": v for k, v in sums.items()}, **self.feed.state()})
        raise TrainingInterrupted(f"interrupted by {name} at step {self.state.step}; checkpoint written: "
                                  f"resume with `aelab train --resume {self.run_dir}`")


def _early_stop(model, cfg: TrainConfig, state: FitState, row: dict, best_weights):
    """Track the best validation loss; with train.patience, stop after that many epochs without gain."""
    loss = row.get("val.loss", math.inf)
    loss = sum(loss) if isinstance(loss, list) else loss  # a stack: the sum it minimises
    if loss < state.best:
        state.best, state.bad_epochs = loss, 0
        return {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.patience else None
    state.bad_epochs += 1
    state.stopped_early = bool(cfg.patience) and state.bad_epochs >= cfg.patience
    return best_weights


class _Signals:
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step (main thread only)."""

    def __enter__(self):
        self.caught, self.saved = 0, {}
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self.saved[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: leave the handlers alone
            pass
        return self

    def _handle(self, signum, frame):
        if self.caught:  # a second signal: stop now, without a checkpoint
            raise KeyboardInterrupt
        self.caught = signum

    def __exit__(self, *exc):
        for s, h in self.saved.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def evaluate(model: torch.nn.Module, data: DeviceData, batch_size: int = 1024) -> dict[str, float]:
    """Means over `data` of `model.metrics(batch)`, on clean inputs, in eval mode, in fp32; one sync
    per metric at the end. A `SeedStack` gives a list per metric (one value per seed)."""
    _check_shape(model, data)
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, len(data), batch_size):
        batch = data.batch(slice(start, start + batch_size))
        n = batch["x"].shape[0]
        for k, v in model.metrics(batch).items():
            sums[k] = sums[k] + v * n if k in sums else v * n
    model.train(was_training)
    return {k: _py(v, len(data)) for k, v in sums.items()}


@torch.inference_mode()
def encode_all(model: torch.nn.Module, data: DeviceData, batch_size: int = 1024) -> torch.Tensor:
    """Codes of every image in `data`, (N, latent_dim), on the host."""
    was_training = model.training
    model.eval()
    codes = [model.encode(data.batch(slice(s, s + batch_size))["x"]).float() for s in range(0, len(data), batch_size)]
    model.train(was_training)
    return torch.cat(codes).cpu()
