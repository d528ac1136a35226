"""Mixed precision: which autocast dtype a fit runs in, and the fp16 loss scaler.

`train.amp`:
  off          fp32.
  auto         CUDA: bf16 where the GPU computes in bf16 natively (Ampere and later), else fp16 with
               a GradScaler. CPU: bf16 only for convolutional models on a CPU with AMX bf16 tile
               units (see `CPU_AUTO` for why), else fp32.
  on           the device's low precision even where auto says no: bf16 (CUDA without native bf16:
               fp16 + GradScaler).
  bf16 / fp16  that dtype, forced (fp16 always with a GradScaler; `amp=fp16` exercises the scaler
               path on any device).
A model that declares `needs_fp32 = True` (the linear autoencoder: its PCA check holds to 5 digits
only in fp32) trains in fp32 whatever `train.amp` says. Autocast covers the model's forward only;
losses cast their inputs to fp32 (`aelab.losses`), and evaluation and metrics run outside autocast.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

# Why CPU auto = bf16 only for conv models with AMX: without bf16 units autocast converts every operand
# and computes in fp32 anyway (bench_train's `aelab bf16` arm, forced on this project's CPU without
# them, measured it slower: benchmarks/RESULTS.md); AVX512-BF16 alone speeds up dot products only.
# AMX tiles are the matrix units issue 13 measured at 1.76x (a 113k-parameter conv AE) and 2.3x (a
# 17M-parameter conv net) in a standalone bf16 step. No dense model was measured, and bench_train has
# not yet run on an AMX machine: dense models stay fp32 by default until it has (`--amp-arm`).
CPU_AUTO = ("amx",)


@functools.cache
def cpu_bf16_units() -> str:
    """The CPU's bf16 matrix units: "amx" (AMX-BF16 tiles), "avx512_bf16" (dot products) or "" (none).

    torch's own detection first (cpuinfo; it also knows whether the OS lets this process use AMX),
    then /proc/cpuinfo's flags. A hypervisor that hides the flags hides the units: the answer is "".
    """
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "amx"
    flags = _cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or "avx512_bf16" in flags:
        return "avx512_bf16"
    return ""


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cuda_bf16() -> bool:
    """Native bf16 on the current GPU (emulated bf16 before Ampere is slower than fp16)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch without the argument: compute capability 8.0 or later
        return torch.cuda.get_device_capability()[0] >= 8


@dataclass(frozen=True)
class Precision:
    """The autocast dtype of a fit (None = fp32) and whether its losses need scaling (fp16)."""

    device_type: str
    dtype: torch.dtype | None = None

    @property
    def scaled(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A fresh loss scaler for one player's optimiser (fp16 only)."""
        return torch.amp.GradScaler(self.device_type) if self.scaled else None

    def __str__(self) -> str:
        return "fp32" if self.dtype is None else str(self.dtype).removeprefix("torch.").replace("float16", "fp16")


def choose(amp: str, device: torch.device, model: torch.nn.Module | None = None) -> Precision:
    """The precision `train.amp=amp` gives `model` on `device` (see the module docstring)."""
    kind = device.type
    if amp == "off" or getattr(model, "needs_fp32", False):
        return Precision(kind)
    if amp in ("bf16", "fp16"):
        return Precision(kind, torch.bfloat16 if amp == "bf16" else torch.float16)
    if kind == "cuda":
        return Precision(kind, torch.bfloat16 if cuda_bf16() else torch.float16)
    if amp == "on" or (kind == "cpu" and cpu_bf16_units() in CPU_AUTO and _convolutional(model)):
        return Precision(kind, torch.bfloat16)
    return Precision(kind)


def _convolutional(model: torch.nn.Module | None) -> bool:
    return model is not None and any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())
