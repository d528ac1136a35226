"""Progress for the engine: a tqdm bar on a terminal, one plain line per epoch otherwise.

The bar reads the running loss only every `every` steps (`.item()` is a host sync; STYLE 3).
"""
from __future__ import annotations

import sys
import time

import torch
from tqdm.auto import tqdm


class Progress:
    def __init__(self, mode: str, epochs: int, per_epoch: int, batch_size: int, every: int = 25):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.epochs, self.per_epoch, self.bsz, self.every = mode, epochs, per_epoch, batch_size, every
        self.bar = None

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.t0 = epoch, time.perf_counter()
        if self.mode == "bar":
            self.bar = tqdm(total=self.per_epoch, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step",
                            leave=False, dynamic_ncols=True)

    def step(self, i: int, sums: dict[str, torch.Tensor]) -> None:
        if self.bar is None or (i + 1) % self.every:
            return
        rate = (i + 1) * self.bsz / (time.perf_counter() - self.t0)
        loss = sums.get("loss")
        shown = {"samples/s": f"{rate:,.0f}"}
        if loss is not None:
            shown["loss"] = f"{float(loss.float().mean()) / (i + 1):.4g}"  # a stack of seeds: their mean
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(self.every)

    def end_epoch(self, row: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.mode == "off":
            return
        terms = "  ".join(f"{k}={v:.4g}" for k, v in row.items()
                          if (k.startswith("train.") or k.startswith("val.")) and isinstance(v, float))
        line = f"epoch {row['epoch']}/{self.epochs}  {terms}  {row['samples_per_s']:,.0f} samples/s  {row['time']:.1f}s"
        (tqdm.write if self.mode == "bar" else print)(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
