"""Export a finished run's networks as ONNX files, for use outside PyTorch (onnxruntime, a browser, C++).

    aelab export runs/conv-fashion-mnist --onnx exported/
    # exported/encoder.onnx  image (N, C, H, W) float32 in [0, 1] -> code (N, D)
    # exported/decoder.onnx  code (N, D) -> image (N, C, H, W) in [0, 1]
    # exported/hash.onnx     image -> bits (N, D) bool        (hashing models only)
    # exported/card.json     input shape, scaling, code size, model name, aelab version, files

The batch dimension is dynamic. Graphs come from PyTorch's torch.export-based exporter (the default
since torch 2.9; it needs `onnxscript`): `pip install aelab[onnx]`. What a model cannot export is
named in the card's `not_exported` with the reason, one line each.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import __version__
from .atomic import atomic_write, atomic_write_text
from .errors import AelabError, ConfigError

OPSET = 18  # the opset torch 2.13's ONNX functions are written in (no conversion step); onnxruntime >= 1.14 runs it


class ExportError(AelabError):
    """A run whose networks cannot be written as ONNX (a missing package, an unexportable op)."""


class _Graph(nn.Module):
    """One of a model's calls (`encode`, `decode_image`, `hash_bits`) as a module's forward."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def graphs(model: nn.Module) -> tuple[dict[str, tuple[Callable, str, str]], dict[str, str]]:
    """The model's exportable calls, name -> (fn, input name, output name); and why others are left out."""
    out: dict[str, tuple[Callable, str, str]] = {"encoder": (model.encode, "image", "code")}
    skipped: dict[str, str] = {}
    if getattr(model, "has_decoder", True):
        out["decoder"] = (model.decode_image, "code", "image")
    else:
        skipped["decoder"] = (f"{model.name}: its decoder is an adversary that probes the representation, "
                              "not a way back to images")
    if hasattr(model, "hash_bits"):
        out["hash"] = (model.hash_bits, "image", "bits")
    return out, skipped


def example_input(model: nn.Module, name: str, batch: int = 2) -> torch.Tensor:
    """A random input of the graph `name`: images for encoder/hash, codes (the encoder's width) else."""
    x = torch.rand(batch, *model.input_shape)
    return model.encode(x).detach() if name == "decoder" else x


def export_model(model: nn.Module, out_dir: str | Path) -> dict[str, Any]:
    """Write the ONNX graphs of `model` (eval mode, CPU) and card.json into `out_dir`; returns the card."""
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError:
        raise ExportError("ONNX export needs the onnx extra: pip install 'aelab[onnx]' "
                          "(onnx, onnxscript, onnxruntime)") from None
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the export folder {out}: {e.strerror or e}") from None
    model = model.to("cpu").eval()
    todo, skipped = graphs(model)
    files = {}
    with torch.no_grad(), _one_translation_table():
        for name, (fn, inp, outp) in todo.items():
            files[name] = _export_one(_Graph(fn).eval(), example_input(model, name), out / f"{name}.onnx", inp, outp)
    outputs = {"encoder": "code (N, code_size) float32", "decoder": "image (N, C, H, W) float32 in [0, 1]",
               "hash": "bits (N, code_size) bool"}
    card = {"model": model.name, "aelab_version": __version__, "torch": torch.__version__, "opset": OPSET,
            "input_shape": list(model.input_shape),
            "code_size": int(example_input(model, "decoder", 1).shape[1]),  # the encoder's output width
            "scaling": "image = uint8 pixels / 255 as float32, layout (N, C, H, W); N is dynamic",
            "files": files, "outputs": {k: v for k, v in outputs.items() if k in files},
            "not_exported": skipped}
    atomic_write_text(out / "card.json", json.dumps(card, indent=2))
    return card


_TABLES: dict[int, Any] = {}  # opset -> torch's table of ONNX translations, built once per process


@contextlib.contextmanager
def _one_translation_table():
    """torch's exporter rebuilds its table of ONNX translations of aten ops on every call (1.3 s of a
    2.4 s export under the profiler). aelab adds no translations and the exporter only reads the table,
    so within our exports each opset's table is built once. Without that private class the exporter
    runs as it is."""
    try:
        from torch.onnx._internal.exporter._registration import ONNXRegistry
        build = ONNXRegistry.__dict__["from_torchlib"].__func__
    except (ImportError, KeyError, AttributeError):
        yield
        return

    def once(cls, opset_version: int = OPSET):
        if opset_version not in _TABLES:
            _TABLES[opset_version] = build(cls, opset_version=opset_version)
        return _TABLES[opset_version]

    ONNXRegistry.from_torchlib = classmethod(once)
    try:
        yield
    finally:
        ONNXRegistry.from_torchlib = classmethod(build)


def _export_one(module: nn.Module, x: torch.Tensor, path: Path, inp: str, outp: str) -> str:
    """Export one graph with a dynamic batch dimension; the file is written atomically."""
    batch = torch.export.Dim("batch", min=1)
    log = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..."
    try:  # the exporter prints its progress and warns about torchvision ops we never use
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (x,), input_names=[inp], output_names=[outp], dynamo=True,
                                        dynamic_shapes=({0: batch},), opset_version=OPSET, verbose=False)
    except Exception as e:  # an op without an ONNX translation: say which graph and why, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"cannot export {path.stem} as ONNX: {first}") from None
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    program.save(str(tmp))
    atomic_write(path, tmp.read_bytes())
    tmp.unlink(missing_ok=True)
    return path.name


def export_run(run_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """`aelab export RUN --onnx DIR`: the run's model (weights loaded) exported by `export_model`."""
    from .runs import load_run

    return export_model(load_run(run_dir).model, out_dir)
