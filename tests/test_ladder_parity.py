"""The ladder's training step against a plain formulation of the same model (Rasmus et al. 2015, the
authors' code read line by line): on fixed weights, input and noise, one step gives the same costs and
the same gradients. The step is optimised (one matrix product per layer for the corrupted and the clean
pass, native batch-norm kernels, a fused combinator); this says it is still the same model.

    .venv/bin/pytest tests/test_ladder_parity.py -q
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aelab.models import build_model
from aelab.models.ladder import LadderConfig
from aelab.models.ladder_layers import combinator, normalise, stats

SHAPE = (1, 8, 8)


def plain_norm(z: torch.Tensor):
    m, s = stats(z)  # two means, a square and a square root: the textbook formula
    return (z - m) / s, m, s


def plain_g(a: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    mu = a[0] * torch.sigmoid(a[1] * u + a[2]) + a[3] * u + a[4]
    v = a[5] * torch.sigmoid(a[6] * u + a[7]) + a[8] * u + a[9]
    return (z - mu) * v + mu


def reference_loss(m, xl: torch.Tensor, yl: torch.Tensor, xu: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The full ladder's cost as the authors' code computes it: a corrupted pass over [labelled;
    unlabelled] rows (each normalised with its own statistics, noise on the input and every z), a
    clean pass over the unlabelled rows, the decoder top-down from BN(softmax), the costs
    mean((zhat - m) / s - z)^2 against the clean pass."""
    noise, n, L = m.cfg.noise, len(xl), m.L

    def encoder(x: torch.Tensor, n_l: int, noisy: bool):
        h = x.flatten(1)
        h = h + noise * torch.randn_like(h) if noisy else h
        zs, st = [h], [None]
        for l in range(1, L + 1):
            zp = m.ops[l - 1](h)
            if n_l:
                zu, mu, su = plain_norm(zp[n_l:])
                z = torch.cat([plain_norm(zp[:n_l])[0], zu])
            else:
                z, mu, su = plain_norm(zp)
            z = z + noise * torch.randn_like(z) if noisy else z
            zs.append(z), st.append((mu, su))
            b = m.beta[m.beta_of[l]]
            h = m.gamma * (z + b) if l == L else torch.relu(z + b)
        return zs, st, h

    zt, _, top = encoder(torch.cat([xl, xu]), n, True)
    clean, st, _ = encoder(xu, 0, False)
    ce = F.cross_entropy(top[:n], yl)
    u, zhat, costs = torch.softmax(top[n:], 1), None, {}
    for l in range(L, -1, -1):
        u = plain_norm(u if zhat is None else m.V[str(l + 1)](zhat))[0]
        zhat = plain_g(m.g[str(l)], zt[l][n:], u)
        mean, std = st[l] if l else (0.0, 1.0)
        costs[l] = ((zhat - mean) / std - clean[l]).square().mean(1).mean()
    return ce + sum(m.lam[l] * c for l, c in costs.items()), costs


def fixed_noise(t: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for randn_like: a function of the shape alone, so both formulations
    get the same noise whatever order they draw it in."""
    return torch.sin(torch.arange(t.numel(), dtype=t.dtype) * 0.7).view_as(t) * 1.3


def test_ladder_step_matches_the_plain_formulation(monkeypatch):
    torch.manual_seed(0)
    m = build_model(LadderConfig(name="ladder", hidden=(40, 30), latent_dim=20, clf_batch=12), SHAPE, 10)
    with torch.no_grad():  # weights away from the init, where g ignores the layer above
        for a in m.g.values():
            a.normal_()
    m.set_pool(torch.randint(0, 256, (30, *SHAPE), dtype=torch.uint8), torch.arange(30) % 10, 300)
    xu = torch.rand(16, *SHAPE)
    batch = {"x": xu, "x_in": xu, "y": torch.full((16,), -1)}
    monkeypatch.setattr(torch, "randn_like", fixed_noise)
    params = [p for p in m.players()[0].params]

    torch.manual_seed(1)
    out = m(batch)
    got = torch.autograd.grad(out["loss"], params)
    torch.manual_seed(1)
    xl, yl = m.labelled(batch)  # the same labelled draw
    ref, costs = reference_loss(m, xl, yl, xu)
    want = torch.autograd.grad(ref, params)

    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-5)
    for l, c in costs.items():
        torch.testing.assert_close(out[f"cost{l}"], c, rtol=1e-5, atol=1e-6)
    for p, g, w in zip(params, got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * float(w.abs().max()) + 1e-8)


@pytest.mark.parametrize("shape", [(9, 5), (6, 3, 4, 4)], ids=["fc", "conv"])
def test_normalise_is_batch_norm_with_differentiable_statistics(shape):
    z = torch.randn(*shape, dtype=torch.double) * 3 + 1
    zn, m, s = normalise(z)
    ref = (z - stats(z)[0]) / stats(z)[1]
    torch.testing.assert_close(zn, ref)
    torch.testing.assert_close((m, s), stats(z))
    # the gradient through all three outputs, the statistics' included (the denoising cost divides by them)
    assert torch.autograd.gradcheck(lambda t: normalise(t), (z.clone().requires_grad_(),))


@pytest.mark.parametrize("shape, unit", [((7, 5), (5,)), ((4, 3, 2, 2), (3, 1, 1))], ids=["fc", "conv"])
def test_combinator_backward_is_the_formulas(shape, unit):
    """The combinator's hand-written backward against autograd's gradient of the plain formula
    (per unit on fc layers, per channel on conv maps)."""
    a, z, u = torch.randn(10, *unit, dtype=torch.double), torch.randn(*shape, dtype=torch.double), \
        torch.randn(*shape, dtype=torch.double)
    assert torch.autograd.gradcheck(combinator, (a.requires_grad_(), z.requires_grad_(), u.requires_grad_()))
    torch.testing.assert_close(combinator(a, z, u), plain_g(a, z, u))


@pytest.mark.parametrize("arch", ["mlp", "conv-strided"])
def test_refit_statistics_are_the_clean_pass_over_the_rows(arch):
    """The authors' test-time statistics: after `refit_statistics(x)`, the eval-mode network on x is the
    train-mode clean pass with x as one batch (every layer normalised by x's own batch statistics),
    however x is chunked."""
    torch.manual_seed(0)
    m = build_model(LadderConfig(name="ladder", arch=arch, hidden=(24, 16), latent_dim=12), SHAPE, 10)
    x = torch.rand(30, *SHAPE)
    m.train()
    with torch.no_grad():
        want = m._encoder(x, 0.0)[3]
    m.refit_statistics(x, chunk=7)
    assert m.training  # its mode is left as it was
    m.eval()
    with torch.no_grad():
        got = m._encoder(x, 0.0)[3]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(m.run_mean1, torch.zeros_like(m.run_mean1))
