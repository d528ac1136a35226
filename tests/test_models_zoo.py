"""Per-family checks beyond the contract: what makes each variant that variant.

    .venv/bin/pytest tests/test_models_zoo.py -q
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aelab.models import build_model, get_model_class


def model(name: str, shape=(1, 8, 8), **fields):
    return build_model(get_model_class(name).Config(name=name, **fields), shape)


def batch_of(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"x": x, "x_in": x, "y": torch.zeros(len(x), dtype=torch.long)}


def blob_images(n: int = 256, seed: int = 0) -> torch.Tensor:
    """n (1, 8, 8) images in [0, 1]: sums of two random Gaussian blobs."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    c = torch.rand(n, 2, 2, generator=g) * 7  # blob centres (n, blob, yx)
    d2 = (yy - c[..., 0, None, None]) ** 2 + (xx - c[..., 1, None, None]) ** 2  # (n, 2, 8, 8)
    return torch.exp(-d2 / 2).sum(1, keepdim=True).clamp(0, 1)


def train(m: torch.nn.Module, batch, steps: int, lr: float = 3e-3) -> torch.nn.Module:
    opts = [torch.optim.Adam(p.params, lr=lr) for p in m.players()]
    for _ in range(steps):
        for p, opt in zip(m.players(), opts):
            opt.zero_grad(set_to_none=True)
            m(batch, p.name)["loss"].backward()
            opt.step()
    return m.eval()


# ----------------------------------------------------------------------------- sparse


@pytest.mark.parametrize("sparsity,weight", [("l1", 0.1), ("kl", 1.0)])
def test_sparse_penalty_makes_codes_sparser(sparsity: str, weight: float) -> None:
    b = batch_of(blob_images())

    def codes(w: float) -> torch.Tensor:
        torch.manual_seed(0)
        m = train(model("sparse", sparsity=sparsity, weight=w, latent_dim=128), b, 150)
        return m.encode(b["x"])

    free, sparse = codes(0.0), codes(weight)
    if sparsity == "l1":  # relu codes: fewer units on per image
        assert (sparse > 1e-3).float().mean() < 0.7 * (free > 1e-3).float().mean()
    else:  # sigmoid codes: mean activation pulled down towards rho = 0.05
        assert sparse.min() >= 0 and sparse.max() <= 1
        assert sparse.mean() < 0.5 * free.mean() and sparse.mean() < 0.15


# ----------------------------------------------------------------------------- deep / tied


@pytest.mark.parametrize("name", ["deep", "tied"])
def test_pretrain_stages_train_only_their_layers(name: str) -> None:
    assert model(name).pretrain_stages() == []  # off by default
    torch.manual_seed(0)
    m = model(name, pretrain_epochs=1)
    stages = m.pretrain_stages()
    assert len(stages) == m.depth == 3
    x = blob_images(64)
    b = {"x": x, "x_in": x * (torch.rand_like(x) > 0.25), "y": torch.zeros(64, dtype=torch.long)}
    for i, stage in enumerate(stages):
        before = {k: v.clone() for k, v in m.state_dict().items()}
        first = stage(b)["loss"].item()
        train(stage, b, 20).train()
        assert stage(b)["loss"].item() < first
        mine = {id(p) for p in stage.players()[0].params}
        for k, p in m.named_parameters():
            changed = not torch.equal(p, before[k])
            assert changed == (id(p) in mine), f"stage {i}: {k} changed={changed}"
        assert {"loss", "mse"} <= set(stage.metrics(b))
        torch._dynamo.reset()  # forward traces to one graph (no_grad block included)
        assert torch.isfinite(torch.compile(stage, backend="eager", fullgraph=True)(b)["loss"])


def test_tied_shares_weights_and_has_fewer_parameters() -> None:
    deep, tied = model("deep", (1, 28, 28)), model("tied", (1, 28, 28))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(tied) < count(deep)
    assert count(deep) - count(tied) == sum(lin.weight.numel() for lin in deep.dec)
    ptrs = [t.data_ptr() for t in tied.state_dict().values()]
    assert len(ptrs) == len(set(ptrs))  # each tensor saved once
    # decoder layer j applies the transposed weight of encoder layer depth-1-j
    h = torch.randn(2, 30)
    w, b = tied.enc[-1].weight, tied.dec[0].bias
    torch.testing.assert_close(tied.decoder_linear(0, h), h @ w + b)


# ----------------------------------------------------------------------------- vae


def test_vae_terms_and_bounds() -> None:
    torch.manual_seed(0)
    m = model("vae", beta=0.5)
    b = batch_of(blob_images(32))
    out = m(b)
    torch.testing.assert_close(out["nelbo"], out["recon"] + out["kl"])
    torch.testing.assert_close(out["loss"], out["recon"] + 0.5 * out["kl"])
    m = train(m, b, 30)
    assert "iw_nll" not in m.metrics(b)
    nelbo = torch.stack([m(b)["nelbo"] for _ in range(20)]).mean()  # averaged: the ELBO, not one draw
    iw = m.iw_nll(b["x"], 50, max_images=256)  # 8 samples per chunk: exercises chunking
    assert iw.shape == (32,) and torch.isfinite(iw).all()
    assert iw.mean() <= nelbo
    m.eval_iw_samples = 10
    assert torch.isfinite(m.metrics(b)["iw_nll"])


@pytest.mark.parametrize("arch,likelihood", [("dense", "gaussian"), ("conv", "gaussian"), ("dense", "bernoulli")])
def test_vae_variants_and_sampling(arch: str, likelihood: str) -> None:
    torch.manual_seed(0)
    m = model("vae", (1, 28, 28), arch=arch, likelihood=likelihood)
    b = batch_of(torch.rand(4, 1, 28, 28))
    m(b)["loss"].backward()
    assert all(p.grad is not None for p in m.parameters())
    assert (likelihood == "gaussian") == hasattr(m, "log_sigma")
    m.eval()
    imgs = m.sample(5, torch.Generator().manual_seed(1))
    assert imgs.shape == (5, 1, 28, 28) and imgs.min() >= 0 and imgs.max() <= 1
    torch.testing.assert_close(imgs, m.sample(5, torch.Generator().manual_seed(1)))


# ----------------------------------------------------------------------------- linear


def test_linear_ae_is_pca() -> None:
    from scipy.linalg import subspace_angles
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(64, 5)))[0]  # (64, 5) orthonormal signal directions
    signal = rng.normal(size=(500, 5)) * [3.0, 2.5, 2.0, 1.5, 1.0]
    x = 0.5 + 0.1 * signal @ basis.T + 0.005 * rng.normal(size=(500, 64))  # within [0, 1]
    xt = torch.tensor(x, dtype=torch.float32).view(500, 1, 8, 8)
    torch.manual_seed(0)
    m = train(model("linear", latent_dim=5), batch_of(xt), 500, lr=1e-2)
    pca = PCA(5).fit(x)
    np.testing.assert_allclose(m.centre.numpy(), pca.mean_, atol=1e-5)
    angles = np.degrees(subspace_angles(m.decoder.weight.detach().double().numpy(), pca.components_.T))
    assert angles.max() < 5, angles
    # metrics: the per-pixel MSE of the linear reconstruction, as PCA's reconstruction error
    pca_mse = np.mean((pca.inverse_transform(pca.transform(x)) - x) ** 2)
    assert m.metrics(batch_of(xt))["mse"].item() == pytest.approx(pca_mse, rel=0.05)
    # reconstruct gives logits whose sigmoid is the (clamped) linear reconstruction
    img = torch.sigmoid(m.reconstruct(xt))
    torch.testing.assert_close(img, m.decode(m.encode(xt)).detach().clamp(1e-6, 1 - 1e-6))


def test_linear_centre_is_not_moved_by_evaluation() -> None:
    m = model("linear", centre=True)
    b = batch_of(torch.rand(8, 1, 8, 8))
    m.metrics(b)  # train mode, but no_grad: evaluation data must not leak into the centre
    assert m.seen.item() == 0 and m.centre.abs().sum().item() == 0
    m(b)
    torch.testing.assert_close(m.centre, b["x"].flatten(1).mean(0))
    assert model("linear", centre=False).centre is None
