"""Experiment tracking with MLflow: `aelab train ... tracking=mlflow` (optional: pip install 'aelab[mlflow]').

A run logs its config as params, each epoch's metrics (step = epoch), its final metrics, and its
report, figures, weights, config and history as artifacts. A study logs one parent run (its config,
its final metrics and report) with a child run per finished cell (the cell's fields as params, its
numeric results as metrics). The store is `tracking_uri=`, else $MLFLOW_TRACKING_URI, else ./mlruns
(a local file store: MLflow 3 keeps it in maintenance mode behind MLFLOW_ALLOW_FILE_STORE, which
aelab sets for local folders; tracking_uri=sqlite:///mlflow.db needs `pip install mlflow`).

Tracking is a bystander: the first failure (a server that is down, a full disk) prints one warning
and turns the tracker off; training never stops for it. HTTP retries are capped (2, 10 s timeout,
unless MLFLOW_HTTP_REQUEST_* say otherwise) so a dead server costs seconds, not MLflow's 4 minutes.
The MLflow run id is kept in the run folder's tracking.json, so `--resume` continues the same run.
"""
from __future__ import annotations

import json
import numbers
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .errors import ConfigError

EXPERIMENT = "aelab"
RECORD = "tracking.json"  # in the run folder: backend, uri, run id
SKIP = {"checkpoint.safetensors", "tensorboard", RECORD}  # never logged as artifacts
_MAX_BATCH = 100  # MLflow's limit on params per log_batch call (1000 for metrics)


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": leaf}."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def numeric(doc: dict[str, Any]) -> dict[str, float]:
    """The numbers of a (nested) dict, flattened (numpy scalars too); bools, strings, lists, arrays left out."""
    return {k: float(v) for k, v in flatten(doc).items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and type(v).__name__ != "bool_"}


def metric_name(key: str) -> str:
    """MLflow accepts letters, digits, _ - . / and spaces in names; anything else becomes _."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", key)


class Tracker:
    """No tracking: what every caller gets with `tracking=none`. MlflowTracker overrides each call."""

    run_id = ""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None, prefix: str = "") -> None: ...
    def log_artifacts(self, folder: str | Path, names: tuple[str, ...] = ()) -> None: ...
    def log_cell(self, key: str, fields: dict[str, Any], row: dict[str, Any]) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


def require(kind: str) -> None:
    """Fail before any work starts when `tracking=mlflow` but MLflow is not installed."""
    if kind == "mlflow":
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError("tracking=mlflow needs MLflow: pip install 'aelab[mlflow]' "
                              "(or set tracking=none)") from None


def resolve_uri(uri: str = "") -> str:
    """tracking_uri, else $MLFLOW_TRACKING_URI, else ./mlruns; a local folder becomes a file:// URI."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "") or "mlruns"
    if "://" not in uri and not uri.startswith("file:"):
        uri = Path(uri).expanduser().resolve().as_uri()
    return uri


def start(kind: str, uri: str, name: str, params: dict[str, Any] | None = None, *,
          tags: dict[str, str] | None = None, folder: str | Path | None = None) -> Tracker:
    """A tracker for one run (or one study's parent run) named `name`, its params logged.

    `folder`: the run folder; its tracking.json is written, and a run id found there is continued
    (a resumed run logs into the MLflow run it started).
    """
    if kind == "none":
        return Tracker()
    require(kind)
    tracker = MlflowTracker(resolve_uri(uri))
    record = Path(folder) / RECORD if folder else None
    old = _read_record(record)
    tracker.open(name, tags or {}, run_id=old.get("run_id", "") if old.get("uri") == tracker.uri else "")
    if tracker.run_id and record is not None and not old:
        try:
            atomic_write_text(record, json.dumps({"backend": kind, "uri": tracker.uri, "run_id": tracker.run_id}))
        except Exception as e:  # a record we cannot write costs only the resume link
            tracker.warn(e)
    if params and not old:
        tracker.log_params(params)
    return tracker


def _read_record(path: Path | None) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path is not None and path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


class MlflowTracker(Tracker):
    """MLflow through its client API (explicit run ids: no global active run, safe beside other code)."""

    def __init__(self, uri: str, root: "MlflowTracker | None" = None):
        self.uri, self.run_id, self.client = uri, "", None
        self.root, self._off = root or self, False  # a study's cells share their parent's on/off switch
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        for var, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                           ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")):
            os.environ.setdefault(var, value)

    @property
    def off(self) -> bool:
        return self.root._off

    def warn(self, error: BaseException) -> None:
        """The first failure: one line on stderr, then every later call is a no-op."""
        if not self.off:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            print(f"aelab: warning: MLflow tracking at {self.uri} failed and is off for this run "
                  f"(training goes on): {first}", file=sys.stderr, flush=True)
        self.root._off = True

    def _safe(self, fn, *args, **kwargs) -> Any:
        if self.off:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # tracking never stops training
            self.warn(e)
            return None

    def open(self, name: str, tags: dict[str, str], run_id: str = "", parent: str = "") -> None:
        self._safe(self._open, name, tags, run_id, parent)

    def _open(self, name: str, tags: dict[str, str], run_id: str, parent: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.uri)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        exp_id = exp.experiment_id if exp else self._create_experiment()
        tags = {**tags, **({"mlflow.parentRunId": parent} if parent else {})}
        self.run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id

    def _create_experiment(self) -> str:
        try:
            return self.client.create_experiment(EXPERIMENT)
        except Exception:  # another process created it first
            return self.client.get_experiment_by_name(EXPERIMENT).experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in flatten(params).items()]
        for i in range(0, len(items), _MAX_BATCH):
            self._safe(self.client.log_batch, self.run_id, params=items[i:i + _MAX_BATCH])

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None, prefix: str = "") -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_name(prefix + k), v, now, step or 0) for k, v in numeric(metrics).items()]
        for i in range(0, len(items), 1000):
            self._safe(self.client.log_batch, self.run_id, metrics=items[i:i + 1000])

    def log_artifacts(self, folder: str | Path, names: tuple[str, ...] = ()) -> None:
        """The files and folders of `folder` named in `names` (default: all but the checkpoint,
        TensorBoard logs and tracking.json)."""
        for item in sorted(Path(folder).iterdir()):
            if item.name in SKIP or item.name.startswith(".") or (names and item.name not in names):
                continue
            if item.is_dir():
                self._safe(self.client.log_artifacts, self.run_id, str(item), item.name)
            else:
                self._safe(self.client.log_artifact, self.run_id, str(item))

    def log_cell(self, key: str, fields: dict[str, Any], row: dict[str, Any]) -> None:
        """A finished study cell as a child run of this (the study's) run: the cell's fields as params,
        the numbers among the rest of its tidy row as metrics (lists, text and arrays left out)."""
        if self.off or not self.run_id:
            return
        child = MlflowTracker(self.uri, root=self)  # one warning per study, not one per cell
        child.open(key, {"aelab.kind": "cell"}, parent=self.run_id)
        if child.run_id:
            child.log_params(fields)
            child.log_metrics({k: v for k, v in row.items() if k not in fields})
            child._safe(child.client.set_terminated, child.run_id, "FINISHED")

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self._safe(self.client.set_terminated, self.run_id, status)
