"""Data on the training device: the whole split as one uint8 tensor, batches as index slices.

It is faster to keep uint8 on the device and convert each batch than to store floats (4x the
memory traffic), and an index slice of a device-side permutation costs no host work (STYLE 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from .dataset import Dataset


def pick_device(name: str = "auto") -> torch.device:
    """`auto` -> CUDA when present, else the CPU; a named CUDA device that is absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is available; use train.device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


class DeviceData:
    """One split on the device: uint8 images (N, C, H, W) and int64 labels (N,), -1 = label hidden."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def permutation(self, gen: torch.Generator) -> torch.Tensor:
        """One epoch's order of the rows, (N,) on the device; a streamed set orders by chunks instead."""
        return torch.randperm(len(self), generator=gen, device=self.device)

    def batch(self, idx: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        """Images as float in [0, 1] and labels for the rows `idx`."""
        x = self.x[idx].float().div_(255.0)
        return {"x": x, "x_in": x, "y": self.y[idx]}

    def subset(self, idx: torch.Tensor | np.ndarray) -> "DeviceData":
        idx = torch.as_tensor(idx, device=self.device)
        return DeviceData(self.x[idx], self.y[idx])

    def labelled(self) -> "DeviceData":
        """Only the rows whose label is visible."""
        return self.subset(torch.nonzero(self.y >= 0).flatten())


@dataclass
class Splits:
    train: DeviceData
    val: DeviceData | None
    test: DeviceData


def hide_labels(y: np.ndarray, labels_per_class: int = 0, label_fraction: float = 0.0, seed: int = 0) -> np.ndarray:
    """Keep a seeded, class-balanced labelled subset; the other labels become -1 (unlabelled data)."""
    if not labels_per_class and not label_fraction:
        return y
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        k = labels_per_class or max(1, round(label_fraction * len(rows)))
        if k > len(rows):
            raise ConfigError(f"asked for {k} labels of class {c} but the training set has only {len(rows)}")
        keep[rows[:k]] = True
    return np.where(keep, y, -1)


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted training and validation row numbers: a seeded `val_fraction` of the n rows held out."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def to_device(ds: Dataset, device: torch.device | str = "cpu", val_fraction: float = 0.0, seed: int = 0,
              labels_per_class: int = 0, label_fraction: float = 0.0) -> Splits:
    """Move a data set to `device`, holding out a seeded validation split of the training images."""
    tr, va = split_rows(len(ds.y_train), val_fraction, seed)
    y_tr = hide_labels(ds.y_train[tr], labels_per_class, label_fraction, seed)

    def put(x: np.ndarray, y: np.ndarray) -> DeviceData:
        return DeviceData(torch.tensor(x, device=device), torch.tensor(y, dtype=torch.int64, device=device))

    val = put(ds.x_train[va], ds.y_train[va]) if len(va) else None
    return Splits(put(ds.x_train[tr], y_tr), val, put(ds.x_test, ds.y_test))
