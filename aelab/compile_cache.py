"""Compile the training forward once per architecture and input shape per process, reuse it across fits.

A study calls `fit` hundreds of times on fresh models of a few architectures. `torch.compile` keeps
its compiled graphs per Python code object, guarded on what the code saw; a fresh model of the same
architecture passes the guards (its weights are graph inputs, not constants), so it reuses the graph
with its own weights swapped in, no re-trace. Two things would still waste the compiles:
- every architecture would share one code object, whose recompile limit (8) then sends the rest of
  the process to eager after paying for the compiles; and a second shape would make dynamo retrace
  with dynamic shapes. So each (architecture, input shape, device, precision) gets a code object of
  its own and `dynamic=False`: one compile each, however many architectures a process trains.
- `model.compile()` would compile the model's every call (evaluation too, at other batch sizes); here
  only the engine's training step goes through the compiled function.
"""
from __future__ import annotations

import types
from typing import Callable

import torch

BACKEND = "inductor"  # tests count compilations with the cheaper "aot_eager"; the count is the same
_CACHE: dict[tuple, Callable] = {}


def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], player: str) -> dict[str, torch.Tensor]:
    return model(batch, player)


def architecture(model: torch.nn.Module) -> tuple:
    """What makes two models the same graph: class, module tree (layer sizes), config, tensor layouts."""
    tensors = [(n, tuple(t.shape), t.dtype, t.stride()) for n, t in model.state_dict(keep_vars=True).items()]
    return type(model).__qualname__, repr(model), repr(getattr(model, "cfg", None)), tuple(tensors)


def compiled(model: torch.nn.Module, batch_shape: tuple[int, ...], device: torch.device,
             precision: str) -> Callable[[torch.nn.Module, dict, str], dict]:
    """The compiled `model(batch, player)` for this architecture and input shape (compiled on first call)."""
    key = (architecture(model), tuple(batch_shape), str(device), precision, BACKEND)
    if key not in _CACHE:
        # a code object of its own: dynamo's cache and recompile limit are per code object
        code = _forward.__code__.replace(co_name=f"_forward_{len(_CACHE)}")
        fn = types.FunctionType(code, _forward.__globals__, code.co_name)
        _CACHE[key] = torch.compile(fn, backend=BACKEND, dynamic=False)
    return _CACHE[key]


def clear() -> None:
    """Forget every compiled step (tests; or to free the graphs of architectures no longer used)."""
    _CACHE.clear()
