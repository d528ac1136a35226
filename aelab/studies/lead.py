"""What a study's report leads with: the main table (arms x sizes) with each arm's convergence status,
and one small-multiples figure of every arm's validation curves. Computed from the stored cells alone.

The runner adds it to metrics.json as `answer`; `aelab.report.html` shows it first, under the verdict
lines, then the other figures, then every metric and the config.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from ..convergence import STATUSES, count_statuses
from .base import Results

CURVES = "curves.png"  # the small-multiples figure (html.py shows it in the lead section)
BOUNDED = ("acc", "map", "near_zero", "knn", "trust")  # metrics that are fractions: intervals clipped to [0, 1]


def answer(headline: str, results: Results, out: Path) -> dict[str, Any]:
    """{"metric", "interval", "table": {arm: {size: summary}}, "status": {arm: "3 converged, ..."}}; draws
    figures/curves.png when cells stored curves."""
    counts = count_statuses(results)
    table: dict[str, dict[str, Any]] = {}
    bounded = any(b in headline for b in BOUNDED)
    for arm in results.values("arm"):
        rows = results.where(arm=arm)
        for n in rows.values("n"):
            vals = [v for v in rows.column(headline, n=n) if isinstance(v, (int, float))] \
                if headline and all(headline in r for r in rows.where(n=n)) else []
            if vals:
                s = stats.summary(vals)
                if bounded:  # a t-interval of a fraction can leave [0, 1]: clip it
                    s["ci95"] = [max(0.0, s["ci95"][0]), min(1.0, s["ci95"][1])] if math.isfinite(s["ci95"][0]) \
                        else s["ci95"]
                table.setdefault(arm, {})[str(n) if n else "all"] = s
    _draw_curves(results, out / "figures" / CURVES)
    interval = "95% Student-t interval over seeds" + (", clipped to [0, 1]" if bounded else "")
    return {"metric": headline, "interval": interval, "table": table,
            "status": {a: status_text(c) for a, c in counts.items()}}


def status_text(counts: dict[str, int]) -> str:
    """{"converged": 2, "still improving": 1} -> "2 converged, 1 still improving" (in STATUSES order)."""
    return ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s))


def _draw_curves(results: Results, path: Path) -> bool:
    """One panel per arm that stored curves: every cell's (step, metric) line. False when none did."""
    from ..report import plots

    panels = {}
    for arm in results.values("arm"):
        lines = [(f"n{r['n']} s{r['seed']}", r["curve"]) for r in results.where(arm=arm)
                 if np.ndim(r.get("curve")) == 2 and len(r["curve"])]
        if lines:
            panels[arm] = lines
    if not panels:
        return False
    plots.save(plots.small_multiples(panels, "optimiser step", "validation curves: the metric each cell selects "
                                     "on (loss: lower is better; accuracy, mAP: higher)"), path)
    return True
