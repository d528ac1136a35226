"""A run's metrics.json as Markdown tables: the README's result tables are this output, pasted.

Every summary ({"mean", "ci95", ...}) at `a.b.c.metric` becomes the cell (row `a · b · c`, column
`metric`), shown as `mean ± half-width of the 95% interval`; rows with the same columns share a
table. Plain numbers are treated the same way; strings under a key containing "verdict" (the
computed sentences) follow the tables as a list. `only` keeps the keys that start with one of its
prefixes, e.g. `N=1000.arms` for one size of the memorisation study; `columns` keeps those columns,
in that order.

    aelab report runs/memorization-fashion --markdown --only N=1000.arms --columns test_acc,mia_adv
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .html import _flatten, _is_number, _is_summary


def cell(value: Any) -> str:
    """`0.8123 ± 0.0042` (mean ± 95% half-width), a bare mean for one seed, or a number to 4 digits."""
    if _is_summary(value):
        lo, hi = (value.get("ci95") or [math.nan, math.nan])[:2]
        half = (hi - lo) / 2 if _is_number(lo) and _is_number(hi) else math.nan
        return f"{value['mean']:.4g}" + (f" ± {half:.2g}" if math.isfinite(half) else "")
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(metrics: Mapping[str, Any], only: Sequence[str] = (), columns: Sequence[str] = ()) -> str:
    """Tables (rows that share columns grouped together) and the verdict sentences, as Markdown."""
    metrics = {k: v for k, v in metrics.items() if k != "meta"}
    rows: dict[str, dict[str, Any]] = {}
    verdicts = []
    for key, value in _flatten(metrics, keep_summaries=True):
        if only and not any(key == p or key.startswith(p + ".") for p in only):
            continue
        if isinstance(value, str) and "verdict" in key:
            verdicts.append((key, value))
        elif _is_summary(value) or _is_number(value):
            row, _, col = key.rpartition(".")
            if columns and col not in columns:
                continue
            rows.setdefault(row.replace(".", " · ") or "value", {})[col] = value
    groups: dict[tuple[str, ...], list[str]] = {}
    for row, cols in rows.items():
        order = [c for c in columns if c in cols] if columns else list(cols)
        groups.setdefault(tuple(order), []).append(row)
    parts = []
    for cols, names in groups.items():
        lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {n} | " + " | ".join(cell(rows[n][c]) for c in cols) + " |" for n in names]
        parts.append("\n".join(lines))
    parts += ["\n".join(f"- **{k}**: {v}" for k, v in verdicts)] if verdicts else []
    return "\n\n".join(parts) + "\n"
