"""The autoencoder zoo. Every module in this package registers its models on import, so a new
variant is one new file here and nothing else changes (STYLE 9).

Each file is imported on its own: one that fails (a syntax error, a missing optional dependency) is
recorded in the registry and named by `aelab models`; the other models stay available.
"""
import importlib
import pkgutil

from ..registry import get_model_class, mark_broken, model_names, register
from .base import AEConfig, Autoencoder, Player, build_model

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in ("base", "blocks"):
        try:
            importlib.import_module(f"{__name__}.{_mod.name}")
        except Exception as e:  # noqa: BLE001 (any error in a model file is that file's, not every command's)
            mark_broken(f"aelab/models/{_mod.name}.py", e)

__all__ = ["AEConfig", "Autoencoder", "Player", "build_model", "get_model_class", "model_names", "register"]
