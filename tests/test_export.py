"""ONNX export: for every registered model, onnxruntime's outputs match PyTorch's to 1e-4 at a batch
size other than the one exported (the batch dimension is dynamic); the CLI writes the files and the
card of a trained run; what a model cannot export is named with its reason.

    .venv/bin/python -m pytest tests/test_export.py -q      (~40 s on one core: one export per graph)
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import require  # noqa: E402

require("onnxscript", "onnxruntime", extra="onnx")

from aelab.export import export_model  # noqa: E402
from aelab.models import build_model, model_names  # noqa: E402
from test_cli import run_cli  # noqa: E402


def reference(model, graph: str, x: torch.Tensor) -> np.ndarray:
    """PyTorch's answer for the graph `graph` on input `x`."""
    with torch.no_grad():
        out = getattr(model, {"encoder": "encode", "decoder": "decode_image", "hash": "hash_bits"}[graph])(x)
    return out.numpy()


@pytest.mark.parametrize("name", model_names())
def test_onnx_matches_pytorch_for_every_model(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, (1, 8, 8))
    with torch.no_grad():  # move batchnorm's running statistics off their initial (0, 1)
        model.train().decode(model.encode(torch.rand(16, 1, 8, 8) * 0.5 + 0.3) * 3)
    model.eval()
    card = export_model(model, tmp_path)
    assert card["model"] == name and card["input_shape"] == [1, 8, 8]
    assert json.loads((tmp_path / "card.json").read_text()) == card
    assert "encoder" in card["files"]
    if model.has_decoder:
        assert "decoder" in card["files"] and not card["not_exported"]
    else:  # the one-line reason, not a silent gap
        assert "decoder" not in card["files"] and "adversary" in card["not_exported"]["decoder"]
        assert "\n" not in card["not_exported"]["decoder"]
    assert ("hash" in card["files"]) == hasattr(model, "hash_bits")

    x = torch.rand(5, 1, 8, 8)  # exported with a batch of 2: 5 checks the dynamic batch dimension
    inputs = {"encoder": x, "hash": x, "decoder": model.encode(x).detach() * 1.5}
    for graph, file in card["files"].items():
        import onnxruntime as ort

        sess = ort.InferenceSession(str(tmp_path / file))
        got = sess.run(None, {sess.get_inputs()[0].name: inputs[graph].numpy()})[0]
        want = reference(model, graph, inputs[graph])
        assert got.shape == want.shape, (graph, got.shape, want.shape)
        if graph == "hash":
            assert got.dtype == np.bool_ and (got == want).all()
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=f"{name}/{graph}")
    assert card["code_size"] == model.encode(x).shape[1]


def test_the_translation_table_is_built_once_and_torch_is_left_as_it_was(tmp_path, monkeypatch):
    """torch rebuilds its ONNX translation table on every export (over a second each); ours builds it
    once per opset for all graphs, and restores torch's own method afterwards."""
    from torch.onnx._internal.exporter import _registration

    from aelab import export

    builds = []
    real = _registration._torchlib_registry.get_torchlib_ops
    monkeypatch.setattr(_registration._torchlib_registry, "get_torchlib_ops", lambda: builds.append(1) or real())
    monkeypatch.setattr(export, "_TABLES", {}, raising=False)
    before = _registration.ONNXRegistry.__dict__["from_torchlib"].__func__
    for i, name in enumerate(["dense", "vae"]):  # four graphs
        assert len(export_model(build_model(name, (1, 8, 8)), tmp_path / str(i))["files"]) == 2
    assert len(builds) == 1
    assert _registration.ONNXRegistry.__dict__["from_torchlib"].__func__ is before


def test_cli_exports_a_trained_run(tmp_path, blobs_npz, monkeypatch, capsys):
    run = tmp_path / "r"
    from aelab.runs import train

    train(overrides=[f"data={blobs_npz}", "model=vae", "model.arch=dense", f"out_dir={tmp_path}", "name=r",
                     "train.epochs=1", "eval.tsne=false", "train.progress=off"])  # here: the export is the CLI under test
    code, out, err = run_cli(monkeypatch, capsys, "export", str(run), "--onnx", str(tmp_path / "onnx"))
    assert code == 0, err
    card = json.loads((tmp_path / "onnx" / "card.json").read_text())
    assert card["files"] == {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
    assert card["code_size"] == 16 and card["input_shape"] == [1, 8, 8] and card["model"] == "vae"
    assert "encoder.onnx" in out and "card.json" in out

    from aelab.runs import load_run

    model = load_run(run).model  # the exported weights are the run's, not a fresh model's
    x = torch.rand(3, 1, 8, 8)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "onnx" / "encoder.onnx"))
    np.testing.assert_allclose(sess.run(None, {"image": x.numpy()})[0], reference(model, "encoder", x), atol=1e-4)


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p, "not an aelab run folder"),
    (lambda p: (p.mkdir(), (p / "config.json").write_text("{}"), p)[-1], "model.safetensors not found"),
])
def test_cli_bad_run_is_one_line(tmp_path, make, fragment, monkeypatch, capsys):
    run = make(tmp_path / "notarun")
    code, _, err = run_cli(monkeypatch, capsys, "export", str(run), "--onnx", str(tmp_path / "o"))
    assert code == 2 and fragment in err  # in this process: any other exception would fail the test here
    assert len(err.strip().splitlines()) == 1
