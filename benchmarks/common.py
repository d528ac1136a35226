"""What every benchmark shares: the machine's description, the data, timing helpers, RESULTS.md sections."""
from __future__ import annotations

import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "RESULTS.md"


def machine(device: str) -> str:
    """One line: CPU model, cores, torch version, the device used (and GPU name)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        found = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from aelab.amp import cpu_bf16_units

    line = f"{cpu}, {cores} cores usable, {torch.get_num_threads()} torch threads, torch {torch.__version__}, " \
           f"Python {platform.python_version()}, CPU bf16 units: {cpu_bf16_units() or 'none detected'}"
    if device == "cuda":
        line += f", GPU {torch.cuda.get_device_name()}"
    return line


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def fashion(n_train: int | None = None, n_test: int | None = None, smoke: bool = False):
    """Fashion-MNIST (uint8 (N, 1, 28, 28)), optionally the first n rows of each split. A smoke run
    (figures that mean nothing) takes random images of the same shape where Fashion-MNIST is absent."""
    from aelab.data import load_dataset
    from aelab.errors import DataError

    try:
        ds = load_dataset("fashion-mnist")
    except DataError:
        if not smoke:
            raise
        print("smoke: Fashion-MNIST not found; random 28x28 images stand in", flush=True)
        ds = _random_images(n_train or 1024, n_test or 256)
    if n_train:
        ds.x_train, ds.y_train = ds.x_train[:n_train], ds.y_train[:n_train]
    if n_test:
        ds.x_test, ds.y_test = ds.x_test[:n_test], ds.y_test[:n_test]
    return ds


def _random_images(n_train: int, n_test: int):
    from aelab.data import Dataset

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_train + n_test, 1, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n_train + n_test)
    return Dataset("random", x[:n_train], y[:n_train], x[n_train:], y[n_train:], [str(i) for i in range(10)], "smoke")


def have_pythae() -> bool:
    try:
        import pythae  # noqa: F401
    except ImportError:
        return False
    return True


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Wall time of a block, with the device drained at both ends (CUDA work is asynchronous: without
    the synchronize the clock would stop when the last kernel was queued, not when it finished)."""

    def __init__(self, device: str):
        self.device, self.seconds = device, 0.0

    def __enter__(self):
        sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds = time.perf_counter() - self.t0


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows])


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section between `<!-- name -->` markers of RESULTS.md."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nWritten by the scripts in this folder.\n"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = "\n".join(line for line in text.splitlines() if not line.startswith("No figures yet")) + "\n"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    print(f"wrote {RESULTS} ({name})")


def test_mse(recon, x_test: np.ndarray, device: str, batch: int = 1000) -> float:
    """MSE per pixel on the test images of `recon(x) -> probabilities`, the same for every system."""
    total = 0.0
    with torch.inference_mode():
        for s in range(0, len(x_test), batch):
            x = torch.from_numpy(x_test[s:s + batch]).to(device).float() / 255
            total += float((recon(x).float() - x).square().sum())
    return total / x_test[:, 0].size
