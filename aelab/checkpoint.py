"""Checkpoints: safetensors for every tensor, JSON for everything else, written atomically.

Nothing here unpickles: a checkpoint is one safetensors file whose metadata holds a JSON document
(step, epoch, history, optimiser hyper-parameters, the run config), so loading a planted file can at
worst fail, never run code. One file per checkpoint makes the write atomic: temp file in the same
folder, flush, fsync, rename, so a kill at any moment leaves either the old or the new checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from .atomic import atomic_write, atomic_write_text  # noqa: F401 (re-exported)
from .errors import CheckpointError
from .readers import check_kind, require_file, short

META_KEY = "aelab"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Tensors (made contiguous, on the CPU) plus a JSON document, as one safetensors file."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, st_save(flat, metadata={META_KEY: json.dumps(meta)}))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON document of a file written by `save_tensors`."""
    path = require_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, ValueError, UnicodeDecodeError, OSError, RecursionError) as e:
        raise CheckpointError(f"{path} is not a safetensors file written by aelab ({short(e)}); "
                              "aelab never unpickles weights: re-create it with aelab") from None
    return tensors, check_kind(meta, dict, f"{path}: its aelab metadata")


def save_model(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    save_tensors(path, model.state_dict(), meta)


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path | str) -> None:
    """Load weights, turning any key or shape mismatch into one clear line."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(f"{path} does not fit this model: missing {missing[:3]}, unexpected {extra[:3]} "
                              "(a checkpoint of another model or config?)")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"{path}: '{k}' has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(state)


# --------------------------------------------------------------------------- optimiser state


def optimizer_tensors(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser's state_dict into tensors (for safetensors) and JSON (the rest)."""
    sd = opt.state_dict()
    tensors, plain = {}, {}
    for pid, slots in sd["state"].items():
        for key, val in slots.items():
            if torch.is_tensor(val):
                tensors[f"opt.{name}.{pid}.{key}"] = val
            else:
                plain.setdefault(str(pid), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def load_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], doc: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"opt.{name}."
    for key, val in tensors.items():
        if key.startswith(prefix):
            pid, slot = key[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[slot] = val
    for pid, slots in doc.get("plain", {}).items():
        state.setdefault(int(pid), {}).update(slots)
    opt.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
    # Saved tensors come back contiguous; give each slot its parameter's layout (channels-last conv
    # weights), as a fresh optimiser would: fused Adam assumes a slot and its parameter share strides.
    for param, slots in opt.state.items():
        for key, val in slots.items():
            if torch.is_tensor(val) and val.shape == param.shape and val.stride() != param.stride():
                slots[key] = torch.empty_like(param, dtype=val.dtype).copy_(val)


# --------------------------------------------------------------------------- training checkpoints


def save_training(path: Path, model: torch.nn.Module, opts: dict, scalers: dict, state: dict[str, Any],
                  best_weights: dict | None, meta: dict, loop_tensors: dict[str, torch.Tensor]) -> None:
    """Weights, optimisers, fp16 loss scalers, RNG states and the loop's state, as one file."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"loop.{k}": v for k, v in loop_tensors.items()})
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    if best_weights is not None:
        tensors.update({f"best.{k}": v for k, v in best_weights.items()})
    opt_docs = {}
    for name, opt in opts.items():
        t, opt_docs[name] = optimizer_tensors(name, opt)
        tensors.update(t)
    doc = {"state": state, "optimizers": opt_docs, "scalers": {k: s.state_dict() for k, s in scalers.items()}}
    save_tensors(path, tensors, {**doc, **meta})


def read_training(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and document of a training checkpoint, checked before anything acts on them: the loop
    state (each field of `FitState` with its type), the optimiser and loss-scaler documents, the RNG."""
    from .step import FitState

    tensors, doc = load_tensors(path)
    state, defaults = doc.get("state"), FitState()
    bad = not isinstance(state, dict) or not isinstance(doc.get("optimizers", {}), dict) or \
        not isinstance(doc.get("scalers", {}), dict) or "rng.cpu" not in tensors
    for k, v in (state.items() if isinstance(state, dict) else ()):
        want = type(getattr(defaults, k, None))
        bad |= not hasattr(defaults, k) or not (type(v) is want or want is float and type(v) is int)
    if bad or not all(isinstance(r, dict) for r in state["history"] if "history" in state):
        raise CheckpointError(f"{path} is not a training checkpoint this aelab can resume (its loop state, "
                              "optimisers or RNG are missing or of the wrong kind); start the run afresh")
    return tensors, doc


def load_training(path: Path, model: torch.nn.Module, opts: dict, scalers: dict):
    """Restore weights, optimisers, loss scalers and RNG in place; returns the loop state (a dict),
    the best weights (if kept) and the loop tensors of a mid-epoch checkpoint."""
    tensors, doc = read_training(path)
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    try:
        for name, opt in opts.items():
            if name not in doc.get("optimizers", {}):
                raise CheckpointError(f"{path} has no optimiser state for player '{name}'")
            load_optimizer(name, opt, tensors, doc["optimizers"][name])
        for name, scaler in scalers.items():
            if name not in doc.get("scalers", {}):
                raise CheckpointError(f"{path} was trained without fp16 loss scaling; resume it with the "
                                      "train.amp it was started with")
            scaler.load_state_dict(doc["scalers"][name])
        torch.set_rng_state(tensors["rng.cpu"])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as e:
        # torch's load_state_dict and set_rng_state on a changed document or tensor
        raise CheckpointError(f"{path}: its optimiser or RNG state does not fit this run ({short(e)}); "
                              "start the run afresh") from None
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return doc["state"], best or None, {k[5:]: v for k, v in tensors.items() if k.startswith("loop.")}
