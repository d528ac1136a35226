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
def own_reconstruction_error(model, data: DeviceData, batch_size: int = 1024) -> float:
    """Per-pixel test MSE of a model's own decoder on its own codes (the reference autoencoder)."""
    was = model.training
    model.eval()
    total = 0.0
    for s in range(0, len(data), batch_size):
        x = data.batch(slice(s, s + batch_size))["x"]
        total += float((torch.sigmoid(model.decode(model.encode(x))) - x).square().sum())
    model.train(was)
    return total / data.x.numel()


@torch.inference_mode()
def representations(model, data: DeviceData, batch_size: int = 1024) -> torch.Tensor:
    was = model.training
    model.eval()
    reps = torch.cat([model.encode(data.batch(slice(s, s + batch_size))["x"]).float()
                      for s in range(0, len(data), batch_size)])
    model.train(was)
    return reps


def train_probe(model, train: DeviceData, test: DeviceData, features: int, seed: int,
                ridges: tuple[float, ...] = (1e-2, 1e-1, 1.0, 10.0, 100.0)) -> tuple[float, torch.Tensor]:
    """A fresh decoder fit on the frozen representations of `train`, scored on `test`.

    The probe is ridge regression from [1, code, relu(code W + b)] (`features` random ReLU units,
    W and b fixed by `seed`) to the pixels: nonlinear, and solved in closed form, so it is trained
    to its optimum (a probe trained by SGD for a fixed budget measures its own budget as much as
    the code). Codes are standardised with the training statistics, so a blown-up scale does not
    handicap it; the ridge strength is chosen on a fifth of the training codes, then refit on all.
    Returns (test per-pixel MSE, test reconstructions (M, C, H, W)).
    """
    r_tr, r_te = representations(model, train), representations(model, test)
    mu, sd = r_tr.mean(0), r_tr.std(0).clamp(min=1e-6)
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = (torch.randn(r_tr.shape[1], features, generator=g) / math.sqrt(r_tr.shape[1])).to(r_tr.device)
    b = torch.randn(features, generator=g).to(r_tr.device)

    def lift(r: torch.Tensor) -> torch.Tensor:
        z = (r - mu) / sd
        return torch.cat([torch.ones_like(z[:, :1]), z, torch.relu(z @ w + b)], 1)

    f_tr, f_te = lift(r_tr), lift(r_te)
    x_tr, x_te = train.x.float().flatten(1) / 255, test.x.float().flatten(1) / 255
    n_val = max(1, len(f_tr) // 5)  # the first fifth scores the ridge strengths, the rest fits
    fv, xv = f_tr[:n_val], x_tr[:n_val]
    g_val, c_val = (fv.T @ fv).double(), (fv.T @ xv).double()
    g_fit, c_fit = (f_tr.T @ f_tr).double() - g_val, (f_tr.T @ x_tr).double() - c_val
    errs = [(fv.double() @ _ridge(g_fit, c_fit, a) - xv).square().mean().item() for a in ridges]
    beta = _ridge(g_fit + g_val, c_fit + c_val, ridges[int(np.argmin(errs))])
    out = (f_te.double() @ beta).float().clamp(0, 1)
    return float((out - x_te).square().mean()), out.view(len(test), *test.x.shape[1:])


def _ridge(gram: torch.Tensor, cross: torch.Tensor, alpha: float) -> torch.Tensor:
    """Ridge weights from F^T F and F^T X; alpha is relative to the mean feature energy."""
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + alpha * gram.diagonal().mean() * eye, cross)


def measure(model, train: DeviceData, test: DeviceData, probe_features: int, ref: dict,
            seed: int) -> tuple[dict, torch.Tensor]:
    """Every per-run metric of a trained classifier (memorization.py's docstring), and its probe's
    reconstructions of the test images."""
    p_tr, ce_tr = per_example(model, train)
    p_te, ce_te = per_example(model, test)
    y_tr, y_te = train.y.cpu().numpy(), test.y.cpu().numpy()
    acc_tr, acc_te = float((p_tr.argmax(1) == y_tr).mean()), float((p_te.argmax(1) == y_te).mean())
    m = min(len(ce_tr), len(ce_te))
    rng = np.random.default_rng(seed)
    mia = mia_advantage(rng.permutation(ce_tr)[:m], rng.permutation(ce_te)[:m])
    err, recons = train_probe(model, train, test, probe_features, seed)
    out = {"test_acc": acc_te, "train_acc": acc_tr, "gap_acc": acc_tr - acc_te,
           "gap_ce": float(ce_te.mean() - ce_tr.mean()), "ece": ece(p_te, y_te), "mia_adv": mia,
           "probe_mse": err, "probe_score": probe_scale(err, ref["class_mean_mse"], ref["ae_mse"])}
    return out, recons
