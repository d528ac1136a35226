"""`aelab demo`: the first thing a new user runs. Trains a convolutional autoencoder and a VAE on
scikit-learn's 8x8 digits (shipped inside scikit-learn, so it needs no download), in well under a
minute on two CPU cores, and writes one report page that links and shows both runs.
"""
from __future__ import annotations

from pathlib import Path

from .config import RunConfig, make_config
from .report import write_index
from .runs import train

# Only what differs from the defaults, and why.
DEMO_RUNS = {
    "conv": ["model=conv", "model.latent_dim=16",  # 8x8 digits need far fewer than 30 dimensions
             "model.channels=(32, 64)",  # two halvings: 8 -> 4 -> 2
             "train.epochs=40", "train.batch_size=64"],  # 1,300 images: more, smaller steps
    "vae": ["model=vae", "model.latent_dim=8", "model.arch=dense",  # a dense VAE samples 8x8 digits well
            "train.epochs=60", "train.batch_size=64"],
}


def run_demo(out: Path = Path("runs/demo")) -> Path:
    """Train the demo runs into `out` (replacing an earlier demo) and return the report's path."""
    runs = []
    for name, overrides in DEMO_RUNS.items():
        cfg = make_config(RunConfig(), None, [f"name={name}", f"out_dir={out}", "data=digits", *overrides])
        runs.append(train(cfg, force=True))
    return write_index(runs, out / "report.html", figures=True)
