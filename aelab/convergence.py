"""Did a model train to the end of what it could learn? A status per trained model, from its curve.

Torch-free: arrays in, a word out, so summaries and reports can use it without the engine.

    curve_status(steps, values, higher_is_better)  -> "converged" | "still improving" | "diverged"
    hash_collapse(codes) / classifier_collapse(pred) / vae_collapse(kl_per_dim)  -> why, or None
    cell_status(curve, higher_is_better, collapse)  -> the status a study stores with each cell

Statuses (README, Studies: convergence):
  converged        the best point lies before the last fifth of the budget, or the gain the late slope
                   projects over the last fifth is within the curve's own noise (or 1% of its range)
  still improving  the best point lies in the last fifth and the curve is still rising (falling, for
                   a loss): more steps would likely help, so a verdict about the method is premature
  collapsed        the model's output carries no information (a detector below says why)
  diverged         the curve holds a NaN or an infinity
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np

STATUSES = ("converged", "still improving", "collapsed", "diverged")
LAST = 0.2  # the last fifth of the budget
# what a verdict line says about an arm whose cells did not converge
PHRASES = {"still improving": "still improving at its last step", "collapsed": "collapsed", "diverged": "diverged"}


def curve_status(steps: Sequence[float], values: Sequence[float], higher_is_better: bool,
                 budget: float | None = None) -> str:
    """The status of one validation curve (points at `steps`, the last at the end of the budget unless
    `budget` says otherwise)."""
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if len(v) == 0:
        return "still improving"  # no evidence of convergence
    if not np.isfinite(v).all():
        return "diverged"
    g = v if higher_is_better else -v  # "gain": higher is better from here on
    total = float(budget if budget is not None else s[-1])
    best = int(np.argmax(g))
    if s[best] < (1 - LAST) * total:
        return "converged"
    late = s >= 0.5 * s[-1]  # the late half of the curve: its slope and its scatter around it
    if late.sum() < 3:
        return "still improving"  # best at the end and too few points to measure the noise
    slope, icpt = np.polyfit(s[late], g[late], 1)
    noise = float(np.std(g[late] - (slope * s[late] + icpt), ddof=2)) if late.sum() > 3 else 0.0
    projected = slope * LAST * total  # the gain the late slope predicts over the last fifth
    return "converged" if projected <= max(noise, 0.01 * float(np.ptp(g))) else "still improving"


def hash_collapse(codes: np.ndarray) -> str | None:
    """(N, bits) bool codes: collapsed when fewer distinct codes than 1% of the images, or a bit never flips."""
    codes = np.asarray(codes, dtype=bool)
    n = len(codes)
    distinct = len(np.unique(np.packbits(codes, axis=1), axis=0))
    if distinct < 0.01 * n:
        return f"{distinct} distinct codes for {n} images"
    dead = np.flatnonzero(codes.all(0) | ~codes.any(0))
    if len(dead):
        return f"{len(dead)} of {codes.shape[1]} bits never flip"
    return None


def classifier_collapse(pred: np.ndarray, share: float = 0.9) -> str | None:
    """Predicted classes (N,): collapsed when one class takes >= 90% of the predictions."""
    pred = np.asarray(pred).reshape(-1)
    if len(pred) == 0:
        return None
    counts = np.bincount(pred.astype(np.int64))
    top = int(counts.argmax())
    return f"class {top} predicted for {counts[top] / len(pred):.0%} of images" if counts[top] >= share * len(pred) else None


def vae_collapse(kl_per_dim: np.ndarray, tol: float = 0.01) -> str | None:
    """Mean KL (nats) of each latent dimension: collapsed when every dimension is about 0."""
    kl = np.asarray(kl_per_dim, dtype=float).reshape(-1)
    return f"KL below {tol} nats in all {len(kl)} latent dimensions" if len(kl) and (kl < tol).all() else None


def cell_status(curve: np.ndarray, higher_is_better: bool, collapse: str | None = None) -> str:
    """A cell's status: collapsed when a detector fired, else its (k, 2) curve's (step, value) status."""
    curve = np.asarray(curve, dtype=float).reshape(-1, 2)
    if collapse:
        return "collapsed"
    return curve_status(curve[:, 0], curve[:, 1], higher_is_better)


# --------------------------------------------------------------------------- summaries


def count_statuses(rows: Iterable[dict[str, Any]], arm_of=lambda r: r["arm"]) -> dict[str, dict[str, int]]:
    """{arm: {status: cells}} over the rows that store a status (in row order)."""
    out: dict[str, Counter] = {}
    for r in rows:
        if isinstance(r.get("status"), str):
            out.setdefault(arm_of(r), Counter())[r["status"]] += 1
    return {a: dict(c) for a, c in out.items()}


def caveat(arm: str, counts: dict[str, dict[str, int]]) -> str:
    """"ladder-full: still improving at its last step in 3 of 3 seeds", or "" when every cell converged."""
    c = counts.get(arm, {})
    n = sum(c.values())
    bad = [f"{PHRASES[s]} in {c[s]} of {n} cells" for s in STATUSES[1:] if c.get(s)]
    return f"{arm}: {'; '.join(bad)}" if bad else ""


def qualify(line: str, arms: Iterable[str], counts: dict[str, dict[str, int]]) -> str:
    """A verdict line with the caveats of the arms it involves that did not converge, computed."""
    notes = [c for a in dict.fromkeys(arms) if (c := caveat(a, counts))]
    return f"{line} [{'; '.join(notes)}]" if notes else line
