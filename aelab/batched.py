"""Many seeds of one architecture trained as ONE model: stacked weights, `torch.func.vmap` over seeds.

A study trains S seeds of a small model; on a GPU one such model leaves most of the device idle.
`fit_seeds` stacks the S models' parameters along a new leading dimension
(`torch.func.stack_module_state`) and runs `functional_call` under `vmap`, so each step is one set of
kernels over (S, B, ...) instead of S small ones.

It is the same computation as S separate `engine.fit` runs, seed for seed:
- seed s initialises its copy under `torch.manual_seed(s)` (as `aelab train seed=s` does);
- seed s draws its own data order and corruption noise from a generator seeded exactly as `fit` seeds
  it, `seed * 1_000_003 + epoch`;
- the loss is the SUM over seeds of each seed's mean loss, so the gradient of the stack is the stack of
  the per-seed gradients; Adam/AdamW/SGD update each element on its own, so one optimiser over the
  stacked tensors is S independent optimisers (tested against S `fit` runs: equal to float rounding).
Random draws inside the model (a VAE's reparameterisation) use `vmap(randomness="different")`:
independent per seed, so the result is equal in distribution, not bit for bit.

Supported: single-player models (`players()` of one player holding every parameter), BatchNorm (its
running statistics are stacked buffers, updated per seed), `train.amp`, schedules, corruption and
augmentation. Not supported here: several players, `train.grad_clip` (a norm over all of a seed's
parameters), `max_bad_steps`, early stopping, checkpoints and `compile`; use `fit` per seed for those.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .config import DataConfig, TrainConfig
from .data.device import DeviceData
from .engine import lr_at, make_optimizer, prepare
from .errors import ConfigError


def build_seeds(build: Callable[[], nn.Module], seeds: list[int], device: torch.device) -> list[nn.Module]:
    """One freshly initialised model per seed, each built under `torch.manual_seed(seed)`."""
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(build().to(device).train())
    return models


def unsupported(model: nn.Module, cfg: TrainConfig) -> str | None:
    """Why `model` under `cfg` cannot be trained as batched seeds, or None if it can."""
    players = model.players()
    if len(players) != 1 or len(players[0].params) != len(list(model.parameters())):
        return "batched seeds support single-player models only; train each seed with fit"
    if cfg.grad_clip or cfg.max_bad_steps or cfg.patience:
        return "batched seeds do not support train.grad_clip, max_bad_steps or patience"
    return None


def _check(models: list[nn.Module], cfg: TrainConfig) -> None:
    reason = unsupported(models[0], cfg)
    if reason:
        raise ConfigError(reason)


def fit_seeds(build: Callable[[], nn.Module], seeds: list[int], train: DeviceData, cfg: TrainConfig | None = None,
              augment: DataConfig | None = None) -> tuple[list[nn.Module], list[list[dict[str, Any]]]]:
    """Train one model per seed, all at once; returns the trained models and each one's history."""
    cfg = cfg or TrainConfig()
    cfg.check()
    device = train.device
    models = build_seeds(build, seeds, device)
    _check(models, cfg)
    params, buffers = stack_module_state(models)  # {name: (S, ...)}; params are fresh leaves
    base = copy.deepcopy(models[0]).to("meta")  # the architecture, without storage

    def one(p: dict, b: dict, x: torch.Tensor, x_in: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return functional_call(base, (p, b), ({"x": x, "x_in": x_in, "y": y},))

    step_all = vmap(one, randomness="different")  # over the leading seed dimension of every input
    opt = make_optimizer(list(params.values()), cfg, fused=device.type in ("cuda", "cpu"))
    amp = cfg.amp == "on" or (cfg.amp == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    bsz = min(cfg.batch_size, len(train))
    per_epoch, step = len(train) // bsz, 0
    total = cfg.epochs * per_epoch
    gens = [torch.Generator(device) for _ in seeds]
    histories: list[list[dict[str, Any]]] = [[] for _ in seeds]
    for epoch in range(cfg.epochs):
        perms = []
        for g, s in zip(gens, seeds):  # exactly as fit seeds its generator: same order, same noise
            g.manual_seed(s * 1_000_003 + epoch)
            perms.append(train.permutation(g))
        perms = torch.stack(perms)  # (S, N)
        sums: dict[str, torch.Tensor] = {}
        for i in range(per_epoch):
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, step, total)
            batches = [prepare(train.batch(p[i * bsz:(i + 1) * bsz]), cfg, augment, g) for p, g in zip(perms, gens)]
            x, x_in, y = (torch.stack([b[k] for b in batches]) for k in ("x", "x_in", "y"))  # (S, B, ...)
            with autocast():
                out = step_all(params, buffers, x, x_in, y)  # {term: (S,)}
            out["loss"].sum().backward()  # d(sum_s L_s)/d theta_s = dL_s/d theta_s
            opt.step()
            opt.zero_grad(set_to_none=True)
            for k, v in out.items():
                sums[k] = sums[k] + v.detach().float() if k in sums else v.detach().float()
            step += 1
        means = {k: (v / per_epoch).tolist() for k, v in sums.items()}  # one sync per epoch
        for j, h in enumerate(histories):
            h.append({"epoch": epoch + 1, "step": step, **{f"train.{k}": v[j] for k, v in means.items()}})
    return _unstack(models, params, buffers), histories


@torch.no_grad()
def _unstack(models: list[nn.Module], params: dict, buffers: dict) -> list[nn.Module]:
    """Copy each seed's slice of the stacked weights back into its own module."""
    for j, m in enumerate(models):
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            t.copy_((params.get(name) if name in params else buffers[name])[j])
    return models
