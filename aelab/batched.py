"""Many seeds of one architecture trained as ONE model, by the engine's one loop.

A study trains S seeds of a small model; on a GPU one such model leaves most of the device idle.
`SeedStack(build, seeds)` builds one model per seed (each under `torch.manual_seed(seed)`, as
`aelab train seed=s` does), stacks their weights along a new leading dimension
(`torch.func.stack_module_state`) and runs the architecture under `torch.func.vmap` over the seeds:
each step is one set of kernels over (S, B, ...) instead of S small ones.

`engine.fit` trains a stack like any model; nothing here is a training loop. It is the same
computation as S separate `fit` runs, seed for seed:
- the feed gives seed s its own data order and corruption noise, from a generator seeded exactly as
  `fit(seed=s)` seeds it (`aelab/feed.py`);
- the stack's loss is the vector of the seeds' losses and the step minimises its sum, so each seed's
  weights get that seed's own gradient; Adam/AdamW/SGD act on each element alone, so one optimiser
  over the stacked tensors is S independent optimisers (tested against S `fit` runs: equal to float
  rounding). BatchNorm's running statistics are stacked buffers, updated per seed.
Validation (per-seed lists in the history), checkpoints, resume, amp, compile and progress come from
the engine. Random draws inside the model (a VAE's reparameterisation) use
`vmap(randomness="different")`: independent per seed, equal in distribution, not bit for bit.

    stack = SeedStack(lambda: build_model("conv", ds.shape), seeds=[0, 1, 2, 3])
    history = fit(stack, splits.train, cfg, val=splits.val)        # rows hold a list per term
    models = stack.unstack()                                       # S ordinary models
    models, histories = fit_seeds(build, seeds, splits.train, cfg)  # the same in one call

Not supported (ConfigError): several players, `train.grad_clip` (a norm over each seed's own
weights), `max_bad_steps` and `patience` (per-seed decisions); train each seed with `fit` for those.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .config import DataConfig, TrainConfig
from .data.device import DeviceData
from .engine import fit
from .errors import ConfigError
from .models.base import Player


def build_seeds(build: Callable[[], nn.Module], seeds: list[int]) -> list[nn.Module]:
    """One freshly initialised model per seed, each built under `torch.manual_seed(seed)`."""
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(build().train())
    return models


def unsupported(model: nn.Module, cfg: TrainConfig | None = None) -> str | None:
    """Why `model` under `cfg` cannot be trained as a stack of seeds, or None if it can."""
    players = model.players()
    if len(players) != 1 or len(players[0].params) != len(list(model.parameters())):
        return "batched seeds support single-player models only; train each seed with fit"
    if cfg is not None and (cfg.grad_clip or cfg.max_bad_steps or cfg.patience):
        return "batched seeds do not support train.grad_clip, max_bad_steps or patience; train each seed with fit"
    return None


def _put(module: nn.Module, dotted: str, value: torch.Tensor) -> None:
    """Replace the parameter or buffer `dotted` (e.g. "encoder.0.weight") of `module`."""
    owner, _, leaf = dotted.rpartition(".")
    setattr(module.get_submodule(owner), leaf, value)


class _Methods(nn.Module):
    """Calls a method of `net` by name, so `functional_call` runs `metrics` as well as `forward`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, method: str, *args: Any) -> Any:
        return getattr(self.net, method)(*args)


class SeedStack(nn.Module):
    """S models of one architecture as one: every weight (S, ...), every call vmapped over seeds."""

    def __init__(self, build: Callable[[], nn.Module], seeds: list[int]):
        super().__init__()
        if not seeds:
            raise ConfigError("a seed stack needs at least one seed")
        models = build_seeds(build, seeds)
        reason = unsupported(models[0])
        if reason:
            raise ConfigError(reason)
        params, buffers = stack_module_state(models)  # {name: (S, ...)}
        net = models[0]  # the architecture; its tensors become the stacked ones
        for name, t in params.items():
            _put(net, name, nn.Parameter(t.detach()))
        for name, t in buffers.items():
            _put(net, name, t)
        self.call = _Methods(net)
        self.seeds = list(seeds)
        self.input_shape = getattr(net, "input_shape", None)
        self.needs_fp32 = getattr(net, "needs_fp32", False)

    def _vmapped(self, method: str, batch: dict[str, torch.Tensor], batch_dim: int | None, *args: Any):
        tensors = {**dict(self.call.named_parameters()), **dict(self.call.named_buffers())}

        def one(t: dict, b: dict) -> dict[str, torch.Tensor]:
            return functional_call(self.call, t, (method, b, *args))

        return vmap(one, in_dims=(0, batch_dim), randomness="different")(tensors, batch)

    def forward(self, batch: dict[str, torch.Tensor], player: str = "model") -> dict[str, torch.Tensor]:
        """Each seed's batch, (S, B, ...) -> each seed's terms, (S,)."""
        return self._vmapped("forward", batch, 0, player)

    @torch.no_grad()
    def metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One batch, (B, ...), for every seed -> each seed's metrics, (S,)."""
        return self._vmapped("metrics", batch, None)

    def players(self) -> list[Player]:
        return [Player("model", list(self.parameters()))]

    def check_train(self, cfg: TrainConfig) -> None:
        reason = unsupported(self.call.net, cfg)
        if reason:
            raise ConfigError(reason)

    @torch.no_grad()
    def unstack(self) -> list[nn.Module]:
        """S ordinary models, each holding its seed's slice of the stacked weights."""
        net, models = self.call.net, []
        for j in range(len(self.seeds)):
            m = copy.deepcopy(net)
            for name, t in net.named_parameters():
                _put(m, name, nn.Parameter(t[j].clone()))
            for name, t in net.named_buffers():
                _put(m, name, t[j].clone())
            models.append(m.train(self.training))
        return models


def split_history(history: list[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    """A stack's history (lists per term) as n per-seed histories."""
    return [[{k: v[j] if isinstance(v, list) else v for k, v in row.items()} for row in history] for j in range(n)]


def fit_seeds(build: Callable[[], nn.Module], seeds: list[int], train: DeviceData, cfg: TrainConfig | None = None,
              augment: DataConfig | None = None, **fit_kw: Any) -> tuple[list[nn.Module], list[list[dict[str, Any]]]]:
    """Train one model per seed, all at once, with `engine.fit`; returns the models and each one's history.
    `fit_kw` goes to `fit` (val, run_dir, resume, on_epoch, ...)."""
    stack = SeedStack(build, seeds)
    history = fit(stack, train, cfg, augment=augment, **fit_kw)
    return stack.unstack(), split_history(history, len(seeds))
