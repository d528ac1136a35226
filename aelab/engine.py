"""The training engine: `fit`, `evaluate` and `encode_all` for any registered model.

This is the one place that knows about devices, autocast, compilation, optimisers, schedules,
checkpoints and progress. It never branches on the model's type (STYLE 5): a model lists its
players (`model.players()`), and each player gets its own optimiser and steps on its own schedule,
minimising `model(batch, player)["loss"]`. The hot loop makes no host sync: losses are summed in
device tensors and read once per epoch (and once per progress interval when a bar is shown).
"""
from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .config import DataConfig, TrainConfig
from .data.augment import augment, corrupt
from .data.device import DeviceData
from .errors import AelabError, DataError
from .progress import Progress
from . import checkpoint as ckpt
from . import distributed

CHECKPOINT = "checkpoint.safetensors"


class TrainingDiverged(AelabError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(AelabError):
    """SIGINT/SIGTERM: a checkpoint was written and the run can be resumed."""

    exit_code = 130


@dataclass
class FitState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    epoch: int = 0  # epochs completed
    step: int = 0  # engine steps completed
    best: float = math.inf  # best validation loss (early stopping)
    bad_epochs: int = 0
    skipped: int = 0  # non-finite steps skipped (train.max_bad_steps)
    stopped_early: bool = False
    batch: int = 0  # batches done in the current epoch (a mid-epoch checkpoint resumes there)
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """The schedule as a pure function of the step, so resuming needs no scheduler state."""
    t = min(step / max(total, 1), 1.0)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "onecycle":  # 30% linear warm-up from lr/25, then cosine down to lr/1e4
        if t < 0.3:
            return cfg.lr * (0.04 + 0.96 * t / 0.3)
        return cfg.lr * (1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (t - 0.3) / 0.7)))
    return cfg.lr


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    kw = {"fused": True} if fused else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)


def prepare(batch: dict[str, torch.Tensor], cfg: TrainConfig, aug: DataConfig | None,
            gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Augment the clean images (the target too), then corrupt what the model sees."""
    if aug is not None and (aug.rotate or aug.shift or aug.hflip):
        batch["x"] = augment(batch["x"], aug.rotate, aug.shift, aug.hflip, gen)
    batch["x_in"] = corrupt(batch["x"], cfg.corrupt, cfg.corrupt_level, gen)
    return batch


class _Stepper:
    """One engine step: each player whose turn it is takes its optimiser steps."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
        self.model, self.cfg = model, cfg
        self.players = model.players()
        fused = device.type in ("cuda", "cpu")  # fused Adam(W): one kernel for all tensors, fewer launches
        self.opts = {p.name: make_optimizer(p.params, cfg, fused) for p in self.players}
        amp = cfg.amp == "on" or (cfg.amp == "auto" and device.type == "cuda")
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
        self.prefix = len(self.players) > 1
        self.sync_check = cfg.max_bad_steps > 0 or cfg.grad_clip > 0
        self.dist = distributed.current()  # one process: every call on it is a no-op

    def set_lr(self, lr: float) -> None:
        for p in self.players:
            for g in self.opts[p.name].param_groups:
                g["lr"] = lr * p.lr_scale

    def __call__(self, batch: dict[str, torch.Tensor], step: int, state: FitState) -> dict[str, torch.Tensor]:
        logged: dict[str, torch.Tensor] = {}
        for p in self.players:
            if step % p.every:
                continue
            for _ in range(p.steps):
                with self.autocast():
                    out = self.model(batch, p.name)
                self.model.zero_grad(set_to_none=True)
                out["loss"].backward()
                self.dist.average_grads(p.params)  # data-parallel: the global batch's gradient
                if self._finite_or_skip(p.params, out, step, state):
                    self.opts[p.name].step()
            for k, v in out.items():
                logged[f"{p.name}.{k}" if self.prefix else k] = v.detach().float()
        return logged

    def _finite_or_skip(self, params: list, out: dict, step: int, state: FitState) -> bool:
        """Clip, and with train.max_bad_steps skip non-finite steps (this check syncs with the host)."""
        if not self.sync_check:
            return True
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip or math.inf)
        if self.cfg.max_bad_steps and not bool(torch.isfinite(norm) & torch.isfinite(out["loss"])):
            state.skipped += 1
            if state.skipped > self.cfg.max_bad_steps:
                raise _diverged(f"step {step}", out, f"after skipping {self.cfg.max_bad_steps} non-finite steps")
            return False
        return True


def _loss_term(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """This step's loss, summed over the players that stepped (keys `loss` or `<player>.loss`)."""
    losses = [v for k, v in out.items() if k == "loss" or k.endswith(".loss")]
    return losses[0] if len(losses) == 1 else sum(losses)


def _first_non_finite(trace: torch.Tensor, sums: dict[str, torch.Tensor], first_step: int, epoch: int) -> str | None:
    """Where training diverged ("step N", or "epoch E" when only a logged term went bad), or None.
    A NaN or inf in any step's loss term stays in the epoch's sums, so checking once an epoch suffices."""
    bad = ~torch.isfinite(trace)
    if bool(bad.any()):
        return f"step {first_step + int(bad.int().argmax())}"
    if sums and not bool(torch.isfinite(torch.stack([v.float() for v in sums.values()])).all()):
        return f"epoch {epoch + 1}"
    return None


def _diverged(where: str, terms: dict[str, Any], extra: str = "") -> TrainingDiverged:
    shown = ", ".join(f"{k}={float(torch.as_tensor(v).detach()):.4g}" for k, v in terms.items())
    return TrainingDiverged(f"training diverged at {where} {extra}({shown}); the last good checkpoint "
                            "is untouched: lower train.lr, set train.grad_clip, or train.max_bad_steps")


def fit(model: torch.nn.Module, train: DeviceData, cfg: TrainConfig | None = None, *,
        val: DeviceData | None = None, seed: int = 0, augment: DataConfig | None = None,
        run_dir: str | Path | None = None, resume: bool = False, meta: dict | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> list[dict[str, Any]]:
    """Train `model` on `train`; returns the per-epoch history. With `run_dir`, checkpoints every epoch
    (and on SIGINT/SIGTERM, mid-epoch), and `resume=True` continues exactly where it stopped."""
    cfg = cfg or TrainConfig()
    cfg.check()
    _check_shape(model, train)
    loop = _Loop(model, train, cfg, val, seed, augment, run_dir, meta or {}, on_epoch)
    if resume:
        loop.restore()
    return loop.run()


def _check_shape(model: torch.nn.Module, data: DeviceData) -> None:
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(data.x.shape[1:]) != tuple(expected):
        shape = "x".join(map(str, data.x.shape[1:]))
        raise DataError(f"images are {shape} (CxHxW) but the model was built for {'x'.join(map(str, expected))}; "
                        "train a model for this data set")


class _Loop:
    """The state of one `fit` call: the epoch loop, its checkpoints and its mid-epoch resume."""

    def __init__(self, model, train, cfg, val, seed, augment, run_dir, meta, on_epoch):
        self.model, self.train, self.cfg, self.val, self.seed, self.augment = model, train, cfg, val, seed, augment
        self.run_dir, self.meta, self.on_epoch = run_dir, meta, on_epoch
        self.device = train.device
        model.to(self.device).train()
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)  # only 4-D (conv) weights change
        self.stepper, self.state = _Stepper(model, cfg, self.device), FitState()
        self.path = Path(run_dir) / CHECKPOINT if run_dir else None
        self.best_weights = None
        self.bsz = min(cfg.batch_size, len(train))
        self.per_epoch = len(train) // self.bsz  # drop the ragged last batch: static shapes for compile
        self.total = cfg.epochs * self.per_epoch
        self.gen = torch.Generator(self.device)
        self.partial: dict[str, torch.Tensor] = {}  # a mid-epoch checkpoint's loop tensors
        self.dist = distributed.current()
        if self.dist.active:  # same start everywhere; different noise draws (VAE sampling) per rank
            self.dist.check_batch(self.bsz)
            self.dist.broadcast_module(model)
            torch.manual_seed(seed * 7919 + self.dist.rank)

    def restore(self) -> None:
        self.best_weights, self.partial = load_checkpoint(self.path, self.model, self.stepper.opts, self.state)

    def run(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        if cfg.compile == "on" or (cfg.compile == "auto" and self.device.type == "cuda"):
            self.model.compile()  # in place: state_dict keys stay clean (STYLE 4)
        self.progress = Progress(cfg.progress, cfg.epochs, self.per_epoch, self.bsz)
        with _Signals() as self.signals:
            for epoch in range(self.state.epoch, cfg.epochs):
                row = self._epoch(epoch)
                self._end_epoch(epoch, row)
                if self.state.stopped_early:
                    break
        self.progress.close()
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        return self.state.history

    def _epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over a seeded permutation; the loss terms are summed on the device."""
        state, bsz, gen = self.state, self.bsz, self.gen
        gen.manual_seed(self.seed * 1_000_003 + epoch)  # a pure function of (seed, epoch): resumable
        perm = self.train.permutation(gen)  # the same on every rank: each takes its shard of a batch
        if self.dist.active:  # corruption noise differs per rank (its own rows)
            gen.manual_seed((self.seed * 1_000_003 + epoch) * 1_009 + self.dist.rank + 1)
        sums = {k[5:]: v.to(self.device) for k, v in self.partial.items() if k.startswith("sums.")}
        if "gen" in self.partial:  # resuming mid-epoch: the corruption draws continue where they stopped
            gen.set_state(self.partial["gen"])
        self.partial = {}
        first_step = state.step - state.batch  # the step number of this epoch's batch 0
        trace = torch.zeros(self.per_epoch, device=self.device)  # each step's loss, read at the end: no sync
        t0 = time.perf_counter()
        self.progress.start_epoch(epoch)
        for i in range(state.batch, self.per_epoch):
            self.stepper.set_lr(lr_at(self.cfg, state.step, self.total))
            rows = self.dist.shard(perm[i * bsz:(i + 1) * bsz])
            batch = prepare(self.train.batch(rows), self.cfg, self.augment, gen)
            out = self.stepper(batch, state.step, state)
            for k, v in out.items():
                sums[k] = sums[k] + v if k in sums else v
            trace[i] = _loss_term(out)
            state.step += 1
            state.batch = i + 1
            self.progress.step(i, sums)
            if self._stop_requested():
                self._interrupted(sums, trace)
        sums = self.dist.mean(sums)
        where = _first_non_finite(trace, sums, first_step, epoch)
        if self.dist.any(where is not None, self.device) and not self.cfg.max_bad_steps:
            raise _diverged(where or "on another process", {k: float(v) / self.per_epoch for k, v in sums.items()})
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "step": state.step, "lr": lr_at(self.cfg, state.step - 1, self.total)}
        row.update({f"train.{k}": float(v) / self.per_epoch for k, v in sums.items()})
        row.update(time=seconds, samples_per_s=self.per_epoch * bsz / seconds, skipped=state.skipped)
        return row

    def _stop_requested(self) -> bool:
        # Under torchrun every rank must stop at the same step; agreeing costs a sync per step there.
        return self.dist.any(bool(self.signals.caught), self.device) if self.dist.active else bool(self.signals.caught)

    def _end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        self.dist.broadcast_module(self.model, buffers_only=True)  # BatchNorm statistics of rank 0
        if self.val is not None:
            row.update({f"val.{k}": v for k, v in evaluate(self.model, self.val).items()})
            self.best_weights = _early_stop(self.model, self.cfg, self.state, row, self.best_weights)
        self.state.history.append(row)
        self.state.epoch, self.state.batch = epoch + 1, 0
        self.progress.end_epoch(row)
        self._save()
        if self.on_epoch:
            self.on_epoch(row)

    def _save(self, loop_tensors: dict[str, torch.Tensor] | None = None) -> None:
        if self.path is not None and self.dist.is_main:  # rank 0 writes; the others only compute
            save_checkpoint(self.path, self.model, self.stepper.opts, self.state, self.best_weights,
                            self.meta, loop_tensors or {})

    def _interrupted(self, sums: dict[str, torch.Tensor], trace: torch.Tensor) -> None:
        """SIGINT/SIGTERM after a finished step: checkpoint mid-epoch (if the loss is still finite), stop."""
        name = signal.Signals(self.signals.caught).name if self.signals.caught else "a signal to another rank"
        if self.path is None:
            raise TrainingInterrupted(f"interrupted by {name} at step {self.state.step}")
        if _first_non_finite(trace, sums, 0, 0) is None:  # a diverged state is never saved
            loop = {f"sums.{k}": v for k, v in sums.items()}
            self._save({**loop, "gen": self.gen.get_state()})
        raise TrainingInterrupted(f"interrupted by {name} at step {self.state.step}; checkpoint written: "
                                  f"resume with `aelab train --resume {self.run_dir}`")


def _early_stop(model, cfg: TrainConfig, state: FitState, row: dict, best_weights):
    """Track the best validation loss; with train.patience, stop after that many epochs without gain."""
    loss = row.get("val.loss", math.inf)
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


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model, opts: dict, state: FitState, best_weights, meta: dict,
                    loop_tensors: dict[str, torch.Tensor]) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"loop.{k}": v for k, v in loop_tensors.items()})
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    if best_weights is not None:
        tensors.update({f"best.{k}": v for k, v in best_weights.items()})
    opt_docs = {}
    for name, opt in opts.items():
        t, opt_docs[name] = ckpt.optimizer_tensors(name, opt)
        tensors.update(t)
    ckpt.save_tensors(path, tensors, {"state": asdict(state), "optimizers": opt_docs, **meta})


def load_checkpoint(path: Path, model, opts: dict, state: FitState):
    """Restore weights, optimisers, RNG and loop state in place; returns the best weights (if kept)
    and the loop tensors of a mid-epoch checkpoint."""
    tensors, doc = ckpt.load_tensors(path)
    ckpt.load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    for name, opt in opts.items():
        if name not in doc.get("optimizers", {}):
            raise ckpt.CheckpointError(f"{path} has no optimiser state for player '{name}'")
        ckpt.load_optimizer(name, opt, tensors, doc["optimizers"][name])
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    for k, v in doc["state"].items():
        setattr(state, k, v)
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return best or None, {k[5:]: v for k, v in tensors.items() if k.startswith("loop.")}


# --------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def evaluate(model: torch.nn.Module, data: DeviceData, batch_size: int = 1024) -> dict[str, float]:
    """Means over `data` of `model.metrics(batch)`, on clean inputs, in eval mode; one sync at the end."""
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
    return {k: float(v) / len(data) for k, v in sums.items()}


@torch.inference_mode()
def encode_all(model: torch.nn.Module, data: DeviceData, batch_size: int = 1024) -> torch.Tensor:
    """Codes of every image in `data`, (N, latent_dim), on the host."""
    was_training = model.training
    model.eval()
    codes = [model.encode(data.batch(slice(s, s + batch_size))["x"]).float() for s in range(0, len(data), batch_size)]
    model.train(was_training)
    return torch.cat(codes).cpu()
