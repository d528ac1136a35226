"""Measures for the memorisation study: calibration, membership inference, label noise, and the probe.

Pure functions of arrays where possible, so each is unit-tested on a hand-made case
(tests/test_memorization.py); the probe decoder is the one piece that trains.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..data.device import DeviceData
from ..models.blocks import mlp


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: sum over equal-width confidence bins of |accuracy - confidence| * share."""
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        at = which == b
        if at.any():
            total += at.mean() * abs(correct[at].mean() - conf[at].mean())
    return float(total)


def mia_advantage(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """Yeom et al. (2018) loss-threshold attack: 'member' when the loss is below the members' mean loss.

    Returns the membership advantage TPR - FPR (0 = no leak, 1 = perfect attack); pass equally many
    members (training images) and non-members (held-out images).
    """
    tau = float(np.mean(member_losses))
    return float(np.mean(member_losses < tau) - np.mean(nonmember_losses < tau))


def noisy_labels(y: np.ndarray, fraction: float, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Replace `fraction` of the labels by a random *other* class (Zhang et al. 2017).

    Returns (new labels, mask of the rows changed): every changed label is wrong, so training
    accuracy on the mask measures pure memorisation.
    """
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(y))[: int(round(fraction * len(y)))]
    out = y.copy()
    out[rows] = (y[rows] + rng.integers(1, classes, len(rows))) % classes  # a shift of 1..C-1: never the same
    mask = np.zeros(len(y), dtype=bool)
    mask[rows] = True
    return out, mask


def probe_scale(err_probe: float, err_class_mean: float, err_autoencoder: float) -> float:
    """0 = the probe is no better than the class-mean image, 1 = as good as the autoencoder reference.

    NaN when the reference autoencoder does not beat the class means (too little training): then
    the scale has no unit, and a number would mislead.
    """
    span = err_class_mean - err_autoencoder
    return float((err_class_mean - err_probe) / span) if span > 0 else math.nan


def class_mean_error(train: DeviceData, test: DeviceData, classes: int) -> tuple[float, torch.Tensor]:
    """Per-pixel MSE on `test` of drawing the training class-mean image of the true class; the means (K, C, H, W)."""
    x, y = train.x.float() / 255, train.y
    means = torch.stack([x[y == c].mean(0) if (y == c).any() else x.mean(0) for c in range(classes)])
    err = (means[test.y] - test.x.float() / 255).square().mean()
    return float(err), means


@torch.inference_mode()
def per_example(model, data: DeviceData, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, K) and cross-entropy per image (N,) of a classifier, in eval mode."""
    was = model.training
    model.eval()
    probs, ce = [], []
    for s in range(0, len(data), batch_size):
        b = data.batch(slice(s, s + batch_size))
        logits = model.classify(b["x"]).float()
        probs.append(logits.softmax(1))
        ce.append(F.cross_entropy(logits, b["y"], reduction="none"))
    model.train(was)
    return torch.cat(probs).cpu().numpy(), torch.cat(ce).cpu().numpy()


@torch.inference_mode()
def representations(model, data: DeviceData, batch_size: int = 1024) -> torch.Tensor:
    was = model.training
    model.eval()
    reps = torch.cat([model.encode(data.batch(slice(s, s + batch_size))["x"]).float()
                      for s in range(0, len(data), batch_size)])
    model.train(was)
    return reps


def train_probe(model, train: DeviceData, test: DeviceData, hidden: int, steps: int, seed: int,
                batch_size: int = 256, lr: float = 2e-3) -> tuple[float, torch.Tensor]:
    """A fresh MLP decoder fit on the frozen representations of `train`, scored on `test`.

    Trained for `steps` Adam steps with a cosine schedule (long enough to converge on these small
    codes); the representations are standardised with the training statistics so the probe is not
    handicapped by a code whose scale was blown up. Returns (test per-pixel MSE, test reconstructions).
    """
    g = torch.Generator(device=train.device).manual_seed(seed)
    r_tr, r_te = representations(model, train), representations(model, test)
    mu, sd = r_tr.mean(0), r_tr.std(0).clamp(min=1e-6)
    r_tr, r_te = (r_tr - mu) / sd, (r_te - mu) / sd
    x_tr, x_te = train.x.float().flatten(1) / 255, test.x.float().flatten(1) / 255
    torch.manual_seed(seed)
    probe = mlp([r_tr.shape[1], hidden, hidden, x_tr.shape[1]]).to(train.device)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(r_tr), (min(batch_size, len(r_tr)),), generator=g, device=train.device)
        loss = (torch.sigmoid(probe(r_tr[idx])) - x_tr[idx]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = torch.sigmoid(probe(r_te))
    return float((out - x_te).square().mean()), out.view(len(test), *test.x.shape[1:])
