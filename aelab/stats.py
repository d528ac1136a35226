"""Statistics over seeds: means with t-intervals, paired differences, and verdicts computed from them.

Studies report every number as mean and 95% confidence interval over seeds; a verdict ("better",
"no measurable difference", "worse") is read off the interval of a paired difference, never typed.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def summary(values: Sequence[float], level: float = 0.95) -> dict:
    """{"mean", "std", "ci95": [lo, hi], "n"}: a Student-t interval for the mean (n >= 2)."""
    v = np.asarray(values, dtype=float)
    n, mean = len(v), float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else 0.0
    # Student's t quantile from scipy.special: scipy.stats gives the same number but takes ~1 s to import.
    # Here, not at the top: a study's workers import this module, never call it.
    from scipy.special import stdtrit

    half = float(stdtrit(n - 1, 0.5 + level / 2) * std / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": n}


def paired(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """Summary of the per-seed differences a - b (the same seeds in both arms)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired arms need the same seeds: {a.shape} vs {b.shape}")
    return summary(a - b, level)


def verdict(diff: dict, higher_is_better: bool = True) -> str:
    """'better', 'worse' or 'no measurable difference' from a paired difference's interval."""
    lo, hi = diff["ci95"]
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 <= hi:
        return "no measurable difference"
    return "better" if (lo > 0) == higher_is_better else "worse"
