"""The model registry: models by name, without importing torch until a model is asked for.

`config.py` resolves `model=NAME` to that model's config class through here, and model files
register themselves here with `@register("name")`. This module imports nothing heavy, so
`import aelab.config` pulls neither torch nor any model file; the model files are imported (each on
its own) the first time a name is looked up. A model file that fails to import is recorded, named in
one line by `aelab models` and in the error for an unknown name, and the other models still work.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError

_MODELS: dict[str, type] = {}
_BROKEN: dict[str, str] = {}  # model file -> why it failed to import, in one line
_LOADING = {"done": False}


def register(name: str):
    """Class decorator: make a model available by `name` to the CLI, configs, checkpoints and tests."""

    def wrap(cls: type) -> type:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"model '{name}' is registered twice")
        cls.name = name
        _MODELS[name] = cls
        return cls

    return wrap


def mark_broken(where: str, error: BaseException) -> None:
    """Record that the model file `where` could not be imported (called by `aelab.models`)."""
    first = (str(error).strip().splitlines() or [""])[0]
    _BROKEN[where] = f"{type(error).__name__}: {first}" if first else type(error).__name__


def _load() -> None:
    if not _LOADING["done"]:
        _LOADING["done"] = True
        importlib.import_module("aelab.models")  # imports each model file, recording broken ones


def broken() -> dict[str, str]:
    """Model files that failed to import: {file: "ErrorType: message"}."""
    _load()
    return dict(_BROKEN)


def broken_note() -> str:
    """One line naming the model files that failed to import, or ''."""
    bad = broken()
    return "; ".join(f"{where} failed to import ({why}): its models are unavailable" for where, why in bad.items())


def model_names() -> list[str]:
    _load()
    return sorted(_MODELS)


def get_model_class(name: str) -> Any:
    """The model class registered as `name`; ConfigError lists the valid names (and broken files)."""
    _load()
    if name not in _MODELS:
        note = broken_note()
        raise ConfigError(f"unknown model '{name}'; choose one of: {', '.join(sorted(_MODELS))}"
                          + (f" ({note})" if note else ""))
    return _MODELS[name]
