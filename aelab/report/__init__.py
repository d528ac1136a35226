"""Reports: figures from arrays (plots.py) and self-contained HTML pages from run folders (html.py).

Nothing here trains or loads a model: plots take arrays, pages take the artifacts a run left behind.
"""
from .html import caption, format_value, write_index, write_report
from .plots import (
    image_grid,
    loss_curves,
    metric_vs,
    recon_grid,
    save,
    save_gif,
    scatter_2d,
    strip,
    to_uint8_grid,
)

__all__ = [
    "caption",
    "format_value",
    "image_grid",
    "loss_curves",
    "metric_vs",
    "recon_grid",
    "save",
    "save_gif",
    "scatter_2d",
    "strip",
    "to_uint8_grid",
    "write_index",
    "write_report",
]
