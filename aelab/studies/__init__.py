"""Studies: experiments that train several models (arms x seeds) and measure them against baselines.

Each study is one file in this package that registers itself with `@register_study("name")`: a
class with a `Config` dataclass (a `StudyConfig`) and `run(cfg, out) -> dict` that trains, measures,
draws its figures into `out / "figures"` and returns its metrics. `run_study` owns the folder, the
config, metrics.json and the report, so a study file holds only its science.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import StudyConfig, get_study, register_study, run_study, study_names

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["StudyConfig", "get_study", "register_study", "run_study", "study_names"]
