"""The contract every registered model keeps (STYLE 13), checked over the whole registry, so a new
model file is covered without editing this test. Tiny CPU tensors only; the whole file runs in
well under a minute on two cores (tests/conftest.py sets one intra-op thread: with two, on shared
cores, these tiny ops ran ~30x slower).

    .venv/bin/pytest tests/test_models_contract.py -q
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_model, save_model

from aelab.models import build_model, model_names

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def make_batch(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"x": x, "x_in": x, "y": torch.arange(x.shape[0]) % 10}


def bars(n: int = 16) -> torch.Tensor:
    """n binary (1, 8, 8) images, each a horizontal and a vertical bar: structured, learnable to ~0 BCE."""
    x = torch.zeros(n, 1, 8, 8)
    for i in range(n):
        x[i, 0, i % 8, :] = 1.0
        x[i, 0, :, (3 * i + i // 8) % 8] = 1.0
    return x


def fresh_copy(model: torch.nn.Module) -> torch.nn.Module:
    return build_model(dataclasses.replace(model.cfg), model.input_shape)


def gradients_reached(model: torch.nn.Module, batch: dict, steps: int = 0) -> set[int]:
    """ids of the parameters that get a finite non-zero gradient from their player's loss, after
    `steps` plain gradient steps of that player."""
    reached: set[int] = set()
    for player in model.players():
        for i in range(steps + 1):
            model.zero_grad(set_to_none=True)
            out = model(batch, player.name)
            assert out["loss"].shape == () and torch.isfinite(out["loss"]), (player.name, out)
            out["loss"].backward()
            if i < steps:
                with torch.no_grad():
                    for p in player.params:
                        if p.grad is not None:
                            p -= 0.01 * p.grad
        for p in player.params:
            if p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0:
                reached.add(id(p))
    return reached


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", model_names())
def test_contract(name: str, shape: tuple[int, int, int], tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape)
    batch = make_batch(torch.rand(4, *shape))

    # shapes (train mode: batchnorm sees a batch)
    z = model.encode(batch["x"])
    assert z.shape == (4, model.cfg.latent_dim)
    assert model.reconstruct(batch["x"]).shape == (4, *shape)

    # finite losses, and every parameter gets a finite gradient from some player; a model may start
    # where some gradients are exactly zero (the ladder's combinator, initialised as its authors do,
    # ignores the layer above until its first step), so those get one more look after one step
    reached = gradients_reached(model, batch)
    if len(reached) < len(list(model.parameters())):
        reached |= gradients_reached(model, batch, steps=1)
    missing = [n for n, p in model.named_parameters() if id(p) not in reached]
    assert not missing, f"no gradient reaches {missing}"

    # save / load round trip into a fresh model: identical outputs in eval mode
    save_model(model, str(tmp_path / "m.safetensors"))
    other = fresh_copy(model)
    load_model(other, str(tmp_path / "m.safetensors"))
    model.eval(), other.eval()
    torch.testing.assert_close(other.reconstruct(batch["x"]), model.reconstruct(batch["x"]), rtol=0, atol=0)
    torch.testing.assert_close(other.encode(batch["x"]), model.encode(batch["x"]), rtol=0, atol=0)

    # evaluation metrics
    m = model.metrics(batch)
    assert {"loss", "mse", "bce"} <= set(m) and all(torch.isfinite(v) for v in m.values()), m

    # bf16 autocast: the loss stays finite and fp32 (losses are computed in fp32)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(batch)["loss"]
    assert torch.isfinite(loss) and loss.dtype == torch.float32


@pytest.mark.parametrize("name", model_names())
def test_overfits_one_batch(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, (1, 8, 8))
    batch = make_batch(bars())
    opts = [(p, torch.optim.Adam(p.params, lr=3e-3)) for p in model.players()]
    main = opts[0][0].name  # the loss watched: the first player's (the autoencoder's)
    first = last = model(batch, main)["loss"].item()
    for step in range(150):  # at most 150 steps; looked at every 10, it stops once the loss has halved
        for player, opt in opts:
            for _ in range(player.steps if step % player.every == 0 else 0):
                opt.zero_grad(set_to_none=True)
                model(batch, player.name)["loss"].backward()
                opt.step()
        if step % 10 == 9 and (last := model(batch, main)["loss"].item()) <= 0.5 * first:
            break
    assert last <= 0.5 * first, f"{name}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("name", model_names())
def test_traces_to_one_graph(name: str) -> None:
    """No Python-side data-dependent control flow or .item() in forward: dynamo needs no graph break."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = build_model(name, (1, 8, 8))
    batch = make_batch(torch.rand(4, 1, 8, 8))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    out = compiled(batch)
    assert torch.isfinite(out["loss"])
