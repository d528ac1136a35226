"""aelab: a laboratory for autoencoders. The flat public API:

    import aelab
    ds = aelab.load_dataset("digits")
    model = aelab.build_model("conv", ds.shape)
    run_dir = aelab.train(overrides=["model=vae", "data=digits", "train.epochs=5"])
    run = aelab.load_run(run_dir)          # model + config + metrics + history
"""
__version__ = "0.1.0"

from .config import DataConfig, EvalConfig, RunConfig, TrainConfig, make_config  # noqa: E402
from .data import Dataset, load_dataset  # noqa: E402
from .data.device import DeviceData, Splits, to_device  # noqa: E402
from .engine import encode_all, evaluate, fit  # noqa: E402
from .errors import AelabError, CheckpointError, ConfigError, DataError  # noqa: E402
from .models import Autoencoder, Player, build_model, model_names, register  # noqa: E402
from .runs import Run, evaluate_run, load_run, resume, train  # noqa: E402

__all__ = [
    "AelabError", "Autoencoder", "CheckpointError", "ConfigError", "DataConfig", "DataError", "Dataset",
    "DeviceData", "EvalConfig", "Player", "Run", "RunConfig", "Splits", "TrainConfig", "build_model",
    "encode_all", "evaluate", "evaluate_run", "fit", "load_dataset", "load_run", "make_config",
    "model_names", "register", "resume", "to_device", "train",
]
