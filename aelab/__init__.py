"""aelab: a laboratory for autoencoders. The flat public API:

    import aelab
    ds = aelab.load_dataset("digits")
    model = aelab.build_model("conv", ds.shape)
    run_dir = aelab.train(overrides=["model=vae", "data=digits", "train.epochs=5"])
    run = aelab.load_run(run_dir)          # model + config + metrics + history

The names are imported on first use (PEP 562), so `import aelab.config` or `aelab --help` does not
pull torch and every model file.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_WHERE = {  # public name -> the module that defines it
    **dict.fromkeys(["DataConfig", "EvalConfig", "RunConfig", "TrainConfig", "make_config"], "config"),
    **dict.fromkeys(["Dataset", "load_dataset"], "data"),
    **dict.fromkeys(["DeviceData", "Splits", "to_device"], "data.device"),
    **dict.fromkeys(["encode_all", "evaluate", "fit"], "engine"),
    **dict.fromkeys(["AelabError", "CheckpointError", "ConfigError", "DataError"], "errors"),
    **dict.fromkeys(["Autoencoder", "Player", "build_model", "model_names", "register"], "models"),
    **dict.fromkeys(["Run", "evaluate_run", "load_run", "resume", "train"], "runs"),
    "fit_seeds": "batched", "SeedStack": "batched",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'aelab' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
