"""The in-memory form every reader returns: uint8 images (N, C, H, W) and int64 labels, on the host."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # uint8 (N, C, H, W)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray  # uint8 (M, C, H, W)
    y_test: np.ndarray  # int64 (M,)
    classes: list[str] = field(default_factory=list)  # class names, index = label
    source: str = ""  # where the files were found ("scikit-learn", a folder, ...)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)
