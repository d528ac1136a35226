"""Run folders: train a model from a config into `runs/<name>/`, resume one, load one back.

A run folder holds everything anyone needs to check it: `config.json`, `history.jsonl`,
`checkpoint.safetensors` (while training), `model.safetensors`, `metrics.json`, `figures/` and
`report.html`. The folder is claimed atomically (`mkdir`), so two runs never share one.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import __version__, analysis, distributed, tracking
from .checkpoint import atomic_write_text, load_state, load_tensors, read_training, save_model
from .config import RunConfig, from_dict, make_config, to_dict
from .data import load_dataset
from .data.device import Splits, pick_device, to_device
from .data.stream import stream_splits
from .engine import CHECKPOINT, TrainingInterrupted, fit
from .errors import CheckpointError, ConfigError, DataError
from .models import Autoencoder, build_model
from .readers import read_json, read_jsonl, short


@dataclass
class Run:
    """A finished run, loaded back: the model with its weights, its config, metrics and history."""

    path: Path
    config: RunConfig
    model: Autoencoder
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


def claim_run_dir(path: Path, force: bool = False) -> Path:
    """Create the run folder `path` atomically; an existing run is kept unless `force`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if force and path.exists():
        shutil.rmtree(path)
    try:
        path.mkdir()
    except FileExistsError:
        raise CheckpointError(f"run folder {path} already exists: use --force to overwrite it, "
                              f"--resume {path} to continue it, or name=... for a new one") from None
    return path


def git_commit(where: str | Path | None = None) -> str:
    """The short commit of the checkout holding `where` (default: aelab's own code), with `+dirty` when
    tracked files differ from it: a result from uncommitted code must not claim a commit."""
    cwd = Path(where) if where is not None else Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5)
        commit = out.stdout.strip()
        if out.returncode or not commit:
            return "unknown"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=cwd, capture_output=True, timeout=10)
        return commit + ("+dirty" if dirty.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def train(cfg: RunConfig | None = None, *, config_file: str | Path | None = None, overrides: list[str] = (),
          force: bool = False) -> Path:
    """Train a model as `cfg` (or the defaults with a TOML file and `key=value` overrides) says."""
    cfg = make_config(cfg or RunConfig(), config_file, list(overrides))
    data = load_splits(cfg)  # bad data fails here, before a run folder exists
    tracking.require(cfg.tracking)  # so does tracking=mlflow without MLflow installed
    path, ctx, failed = Path(cfg.out_dir) / cfg.run_name, distributed.current(), None
    if ctx.is_main:  # under torchrun only rank 0 claims the folder and writes files
        try:
            claim_run_dir(path, force)
            atomic_write_text(path / "config.json", json.dumps(to_dict(cfg), indent=2))
        except CheckpointError as e:
            failed = e
    if ctx.any(failed is not None, data[1].train.device):  # every rank stops, not only rank 0
        distributed.teardown()
        raise failed or CheckpointError(f"rank 0 could not claim the run folder {path}")
    return _execute(cfg, path, data, resume=False)


def read_config(path: Path) -> RunConfig:
    """The checked config of run folder `path` (its config.json); one line naming the file on any problem."""
    path = Path(path)
    if not path.is_dir() or not (path / "config.json").exists() and not (path / "config.json").is_symlink():
        raise CheckpointError(f"{path} is not an aelab run folder (no config.json)")
    doc = read_json(path / "config.json")
    try:
        cfg = from_dict(RunConfig, doc)
        cfg.check()
    except ConfigError as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from None
    return cfg


def resume(path: str | Path) -> Path:
    """Continue a stopped run from its last checkpoint; the result equals an uninterrupted run."""
    path = Path(path)
    cfg = read_config(path)
    if (path / "metrics.json").exists() or (path / "metrics.json").is_symlink():
        raise CheckpointError(f"run {path} has already finished; nothing to resume (metrics.json exists)")
    # Killed before its first checkpoint: starting afresh in the same folder is the exact continuation.
    resuming = (path / CHECKPOINT).exists() or (path / CHECKPOINT).is_symlink()
    if resuming:
        read_training(path / CHECKPOINT)  # a corrupt checkpoint fails here, before anything is written
    try:
        data = load_splits(cfg)
    except DataError as e:  # the data set comes from the run's config: say which file named it
        raise DataError(f"{path / 'config.json'}: its data cannot be loaded: {e}") from None
    return _execute(cfg, path, data, resume=resuming)


def load_splits(cfg: RunConfig) -> tuple[Any, Splits]:
    """The data set and its splits on the training device (with data.stream, left on disk)."""
    d = cfg.data
    ds = load_dataset(d.name, d.data_dir or None, d.download, mmap=d.stream)
    _, device = distributed.setup(pick_device(cfg.train.device))  # torchrun: join the group, cuda:LOCAL_RANK
    args = (ds, device, d.val_fraction, cfg.seed, d.labels_per_class, d.label_fraction)
    return ds, stream_splits(*args, chunk_rows=d.chunk_rows) if d.stream else to_device(*args)


def _execute(cfg: RunConfig, path: Path, data: tuple[Any, Splits], resume: bool) -> Path:
    """Train and write the run; the process group is left and the TensorBoard writer closed on any exit."""
    board = _tensorboard(path) if distributed.current().is_main else None
    try:
        return _train_and_write(cfg, path, data, resume, board)
    finally:
        if board is not None:
            board.close()
        distributed.teardown()


def _train_and_write(cfg: RunConfig, path: Path, data: tuple[Any, Splits], resume: bool, board) -> Path:
    ds, splits = data
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, ds.shape, ds.num_classes).to(splits.train.device)
    meta = {"seed": cfg.seed, "aelab_version": __version__, "git_commit": git_commit(),
            "device": str(splits.train.device), "torch": torch.__version__,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t0 = time.perf_counter()
    if not resume:
        pre = replace(cfg.train, epochs=max(getattr(cfg.model, "pretrain_epochs", 0), 1))
        for stage in model.pretrain_stages():  # greedy layer-wise pretraining, where the model has it
            fit(stage, splits.train, pre, seed=cfg.seed, augment=cfg.data)
    rows = list(read_training(path / CHECKPOINT)[1]["state"].get("history", [])) if resume else []
    ctx = distributed.current()
    tracker = _tracker(cfg, path) if ctx.is_main else tracking.Tracker()

    def log_epoch(row: dict) -> None:  # the whole file each epoch: a resumed run rewrites it consistently
        if not ctx.is_main:
            return
        rows.append(row)
        atomic_write_text(path / "history.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("epoch", "step")}
        tracker.log_metrics(scalars, step=row["epoch"], prefix="epoch/")
        if board is not None:
            for k, v in scalars.items():
                board.add_scalar(k, v, row["epoch"])
            board.flush()

    try:
        history = fit(model, splits.train, cfg.train, val=splits.val, seed=cfg.seed, augment=cfg.data,
                      run_dir=path, resume=resume, meta={"config": to_dict(cfg)}, on_epoch=log_epoch)
    except BaseException as e:  # the MLflow run says how it ended; the error goes on unchanged
        tracker.finish("KILLED" if isinstance(e, (KeyboardInterrupt, TrainingInterrupted)) else "FAILED")
        raise
    meta["train_seconds"] = time.perf_counter() - t0
    if ctx.active:
        meta["processes"], meta["backend"] = ctx.world, distributed.backend()
        if not ctx.is_main:  # rank 0 writes the model, metrics, figures and report
            ctx.barrier()
            return path
    save_model(path / "model.safetensors", model, {"config": to_dict(cfg), "input_shape": list(ds.shape),
                                                   "num_classes": ds.num_classes})
    metrics = analysis.run_metrics(model, splits, cfg)
    analysis.run_figures(model, splits, ds, cfg, history, path / "figures")
    metrics["meta"] = {**meta, "epochs": len(history), "finished": True}
    atomic_write_text(path / "metrics.json", json.dumps(metrics, indent=2))
    (path / CHECKPOINT).unlink(missing_ok=True)  # the final weights are in model.safetensors
    from .report import write_report  # matplotlib: only once a run has trained

    write_report(path)
    tracker.log_metrics(metrics)
    tracker.log_artifacts(path)
    tracker.finish()
    ctx.barrier()  # the others wait for rank 0's files (a no-op in one process)
    return path


def _tracker(cfg: RunConfig, path: Path) -> tracking.Tracker:
    """The run's MLflow run (with tracking=mlflow): params = the config; a resumed run continues its own."""
    return tracking.start(cfg.tracking, cfg.tracking_uri, path.name, to_dict(cfg), folder=path,
                          tags={"aelab.kind": "run", "aelab.run_dir": str(path.resolve())})


def _tensorboard(path: Path):
    """A TensorBoard writer in the run folder when `tensorboard` is installed (`pip install aelab[tensorboard]`)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path / "tensorboard"))


def load_run(path: str | Path) -> Run:
    """A finished run: its model (weights loaded, eval mode), config, metrics and history."""
    path = Path(path)
    cfg = read_config(path)
    weights = path / "model.safetensors"
    tensors, doc = load_tensors(weights)
    shape, classes = doc.get("input_shape"), doc.get("num_classes")
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(d) is int and 0 < d <= 65536 for d in shape)
            and (classes is None or type(classes) is int and 0 <= classes <= 1 << 20)):
        raise CheckpointError(f"{weights} has no aelab metadata (input_shape, num_classes) it can use; "
                              "was it written by aelab?")
    try:
        model = build_model(cfg.model, tuple(shape), classes)
    except (ValueError, TypeError, RuntimeError) as e:  # a config the model cannot be built from
        raise CheckpointError(f"{path / 'config.json'}: cannot build its model for {tuple(shape)} images "
                              f"({short(e)})") from None
    load_state(model, tensors, weights)
    metrics = read_json(path / "metrics.json", default={})
    history = read_jsonl(path / "history.jsonl")[0] or []
    return Run(path, cfg, model.eval(), metrics, history)


def evaluate_run(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """Re-measure a finished run on its data (e.g. with `eval.iw_samples=1000`); writes eval.json."""
    run = load_run(path)
    cfg = make_config(run.config, None, list(overrides))
    _, splits = load_splits(cfg)
    metrics = analysis.run_metrics(run.model.to(splits.train.device), splits, cfg)
    atomic_write_text(Path(path) / "eval.json", json.dumps(metrics, indent=2))
    return metrics
