"""The autoencoder zoo. Every module in this package registers its models on import, so a new
variant is one new file here and nothing else changes (STYLE 9)."""
import importlib
import pkgutil

from .base import AEConfig, Autoencoder, Player, build_model, get_model_class, model_names, register

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in ("base", "blocks"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["AEConfig", "Autoencoder", "Player", "build_model", "get_model_class", "model_names", "register"]
