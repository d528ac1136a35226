"""Studies: experiments that train several models (arms x seeds) and measure them against baselines.

Each study is one file in this package that registers itself with `@register_study("name")`: a
`Study` subclass with a `Config` dataclass (a `StudyConfig`), its grid of cells (`cells`), the work of
one cell (`run_cell`) and the summary of the stored cells (`summarize`). `runner.py` owns the folder,
the config, the cell store, the workers, metrics.json and the report, so a study file holds only its
science (base.py says more).
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import Cell, CellContext, Results, Study, StudyConfig, get_study, register_study, study_names
from .runner import resume_study, run_study, study_status

_INFRA = {"base", "runner", "store", "executors"}
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in _INFRA:
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["Cell", "CellContext", "Results", "Study", "StudyConfig", "get_study", "register_study",
           "resume_study", "run_study", "study_names", "study_status"]
