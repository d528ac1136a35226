"""The `aelab` command. Each subcommand parses its arguments and calls one library function.

Errors a user can cause (`AelabError`) print one line and exit 2; no traceback.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path

import click

from .errors import AelabError


def _split_args(args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """`[CONFIG.toml] [key=value ...]` -> (config file or None, overrides)."""
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aelab")
def cli() -> None:
    """aelab: train, compare and use autoencoders."""


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
@click.option("--force", is_flag=True, help="Overwrite an existing run folder of the same name.")
@click.option("--resume", "resume_dir", type=click.Path(), help="Continue a stopped run from its checkpoint.")
def train(args: tuple[str, ...], force: bool, resume_dir: str | None) -> None:
    """Train a model: aelab train [CONFIG.toml] [key=value ...]  (e.g. model=conv data=fashion-mnist)."""
    from . import distributed, runs

    if resume_dir:
        if args:
            raise click.UsageError("--resume takes no config or overrides: the run's config.json is used")
        path = runs.resume(resume_dir)
    else:
        config_file, overrides = _split_args(args)
        path = runs.train(config_file=config_file, overrides=overrides, force=force)
    if distributed.launched_rank() == 0:  # under torchrun rank 0 wrote metrics.json; another's folder may lack it
        _print_summary(path)


def _print_summary(path: Path) -> None:
    metrics = json.loads((path / "metrics.json").read_text())
    shown = {k: v for k, v in metrics.items() if k.startswith("test.") and isinstance(v, float)}
    click.echo("  ".join(f"{k}={v:.5g}" for k, v in shown.items()))
    click.echo(f"run: {path}\nreport: {path / 'report.html'}")


@cli.command(name="eval", context_settings={"ignore_unknown_options": True})
@click.argument("run_dir", type=click.Path())
@click.argument("overrides", nargs=-1)
def eval_(run_dir: str, overrides: tuple[str, ...]) -> None:
    """Re-measure a finished run on its data (e.g. eval.iw_samples=1000); writes RUN_DIR/eval.json."""
    from .runs import evaluate_run

    metrics = evaluate_run(run_dir, list(overrides))
    for k, v in metrics.items():
        click.echo(f"{k:24s} {v:.6g}")


def markdown_of(run_dir: Path, only: tuple[str, ...], columns: tuple[str, ...] = ()) -> str:
    from .errors import DataError
    from .readers import read_json
    from .report.markdown import markdown

    path = run_dir / "metrics.json"
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{path}: no metrics.json; give a finished run or study folder")
    return markdown(read_json(path, DataError), only, columns)


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--index", type=click.Path(), help="Also write a page comparing the runs here.")
@click.option("--markdown", "as_markdown", is_flag=True, help="Print metrics.json as Markdown tables instead.")
@click.option("--only", multiple=True, help="With --markdown: keep metric keys starting with this (repeatable).")
@click.option("--columns", default="", help="With --markdown: comma-separated columns to keep, in order.")
def report(run_dirs: tuple[str, ...], index: str | None, as_markdown: bool, only: tuple[str, ...],
           columns: str) -> None:
    """Rebuild report.html of each run from its artifacts (no training), or print its tables."""
    from .report import write_index, write_report

    for d in run_dirs:
        if as_markdown:
            click.echo(markdown_of(Path(d), only, tuple(c for c in columns.split(",") if c)))
            continue
        click.echo(write_report(d))
    if index:
        click.echo(write_index([Path(d) for d in run_dirs], Path(index)))


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
@click.option("--list", "list_", is_flag=True, help="List the studies with a line on each.")
@click.option("--force", is_flag=True, help="Overwrite an existing study folder of the same name.")
@click.option("--resume", "resume_dir", type=click.Path(), help="Run the cells of a stopped study not stored yet.")
@click.option("--status", "status_dir", type=click.Path(), help="Cells done, failed and remaining of a study.")
@click.option("--plan", "plan", is_flag=True, help="Print the grid, each arm's steps and the estimated wall time; "
              "run nothing.")
def study(args: tuple[str, ...], list_: bool, force: bool, resume_dir: str | None, status_dir: str | None,
          plan: bool) -> None:
    """Run a study: aelab study NAME [CONFIG.toml] [key=value ...]  (e.g. seeds=5 data=fashion-mnist workers=2)."""
    from .studies import resume_study, run_study, study_names, study_status
    from .studies import plan as planner
    from .studies.base import describe

    if status_dir:
        s = study_status(status_dir)
        click.echo(_status_text(s))
        if s["remaining"] and s["running"]:  # a probe now would time under the study's own load, and slow it
            click.echo(f"running (pid {s['running']}): no timed estimate of what is left while it runs")
        elif s["remaining"]:  # the plan's timed estimate for what is left
            click.echo(planner.plan_text(planner.left(status_dir), "left"))
        return
    if plan and args:
        config_file, overrides = _split_args(args[1:])
        click.echo(planner.plan_text(planner.plan_study(args[0], config_file, overrides)))
        return
    if resume_dir:  # overrides may change how cells run (workers=...), never what they compute
        path = resume_study(resume_dir, list(args))
    elif list_ or not args:
        for name in study_names():
            click.echo(f"{name:14s} {describe(name)}")
        return
    else:
        config_file, overrides = _split_args(args[1:])
        path = run_study(args[0], config_file, overrides, force)
    click.echo(f"study: {path}\nreport: {path / 'report.html'}")


def _status_text(s: dict) -> str:
    lines = [f"{s['study']}: {s['done']} of {s['cells']} cells done, {len(s['failed'])} failed, "
             f"{s['remaining']} remaining{' (finished)' if s['finished'] else ''}"]
    if s["done"]:
        lines.append(f"time per cell so far: {s['seconds_per_cell']:.1f} s ({s['cell_seconds'] / 60:.1f} min in all)")
        lines.append("seconds per arm: " + ", ".join(f"{a} {t:.0f}" for a, t in s["seconds_by_arm"].items()))
    for k, n in s.get("in_progress", {}).items():
        lines.append(f"in progress: {k} at step {n:,} (its checkpoint: --resume goes on from there)")
        point = dict(s.get("latest", {}).get(k, {}))
        if point:  # the curve's last point: is it still improving? (no repo command printed it before)
            at = int(point.pop("step", n))
            lines.append(f"  last curve point, step {at:,}: " + ", ".join(f"{m} {v:.4g}" for m, v in point.items()))
    lines += [f"failed: {k}: {v}" for k, v in s["failed"].items()]
    lines += [f"cell {k}: its stored record cannot be used (corrupt, cut short or of another config); it will run "
              "again" for k in s.get("unreadable", [])]
    return "\n".join(lines)


def _options(args: tuple[str, ...], allowed: dict[str, type]) -> dict:
    """`key=value` arguments -> {key: value}, each key known and its value of the allowed type."""
    from .errors import ConfigError

    out = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            raise ConfigError(f"unknown argument {arg!r}; give key=value with key one of: {', '.join(allowed)}")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise ConfigError(f"{key}={value!r}: expected {allowed[key].__name__}") from None
    return out


@cli.command(name="index")
@click.argument("run_dir", type=click.Path())
@click.argument("args", nargs=-1)
def index_(run_dir: str, args: tuple[str, ...]) -> None:
    """Index a hashing run's codes of a data set: aelab index RUN data=NAME [out=FOLDER] [data_dir=DIR]."""
    from .errors import ConfigError
    from .index import build_index

    opts = _options(args, {"data": str, "out": str, "data_dir": str})
    if "data" not in opts:
        raise ConfigError("give the data set to index: aelab index RUN data=fashion-mnist")
    path = build_index(run_dir, opts["data"], opts.get("out"), opts.get("data_dir"))
    meta = json.loads((path / "index.json").read_text())
    click.echo(f"index: {path}  ({meta['rows']} codes of {meta['bits']} bits, {meta['model']} on {meta['data']})")


@cli.command()
@click.argument("index_dir", type=click.Path())
@click.argument("source", type=click.Path())
@click.argument("args", nargs=-1)
def query(index_dir: str, source: str, args: tuple[str, ...]) -> None:
    """Nearest indexed images of a query: aelab query INDEX IMAGE|NPZ [k=10] [radius=R] [out=FIG.png]."""
    from .index import hits_figure, query_index, within_radius

    opts = _options(args, {"k": int, "radius": int, "out": str})
    hits = query_index(index_dir, source, opts.get("k", 10))
    # every file is read (and the figure drawn) before anything is printed: a bad file is one line,
    # not half an answer
    within = within_radius(index_dir, hits.bits, opts["radius"]) if "radius" in opts else []
    figure = hits_figure(hits, opts.get("out") or Path(index_dir) / "query.png")
    classes = hits.meta.get("classes") or []
    for i in range(len(hits.rows)):
        click.echo(f"query {i}:")
        for rank, (row, d, y) in enumerate(zip(hits.rows[i], hits.distances[i], hits.labels[i]), 1):
            name = classes[y] if 0 <= y < len(classes) else str(y)
            click.echo(f"  {rank:3d}. row {row:7d}  distance {d:3d}  {name}")
    for i, rows in enumerate(within):
        click.echo(f"query {i}: {len(rows)} indexed codes within Hamming radius {opts['radius']}")
    click.echo(f"figure: {figure}")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--port", default=5006, show_default=True, help="Port on 127.0.0.1 (0 = any free port).")
@click.option("--points", default=10_000, show_default=True, help="Test images on the map.")
@click.option("--maps", default="", help="Comma-separated 2-D maps: pca, tsne, umap (default: pca, plus umap "
                                         "when installed).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="HOST[:PORT]",
              help="Also answer requests addressed to this host (a tunnel's or proxy's name); only "
                   "127.0.0.1 and localhost otherwise (repeatable).")
def explore(run_dir: str, port: int, points: int, maps: str, allow_hosts: tuple[str, ...]) -> None:
    """Explore a finished run's latent space in the browser (map, morphs, sliders, attributes)."""
    from .explore import explore as run_explorer

    run_explorer(run_dir, port, points, [m.strip() for m in maps.split(",") if m.strip()] or None, click.echo,
                 list(allow_hosts))


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--onnx", "onnx_dir", type=click.Path(), required=True,
              help="Write encoder.onnx, decoder.onnx (hash.onnx for hashing models) and card.json here.")
def export(run_dir: str, onnx_dir: str) -> None:
    """Export a finished run's encoder and decoder as ONNX files with a JSON card."""
    from .export import export_run

    card = export_run(run_dir, onnx_dir)
    for name, file in card["files"].items():
        click.echo(f"{name:8s} {Path(onnx_dir) / file}")
    for name, why in card["not_exported"].items():
        click.echo(f"{name:8s} not exported: {why}")
    click.echo(f"card     {Path(onnx_dir) / 'card.json'}")


@cli.command()
def models() -> None:
    """List every registered model with its config fields and defaults."""
    from .registry import broken_note, get_model_class, model_names

    for name in model_names():
        cls = get_model_class(name)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name}: {doc}")
        hints = typing.get_type_hints(cls.Config)
        for f in dataclasses.fields(cls.Config):
            if f.name != "name":
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                click.echo(f"    model.{f.name} = {default!r}  ({_type_name(hints[f.name])})")
    if broken_note():
        click.echo(f"aelab: warning: {broken_note()}", err=True)


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


@cli.command()
@click.option("--data-dir", type=click.Path(), default=None, help="Also look in this folder.")
@click.option("--export", nargs=2, metavar="NAME FOLDER", default=None,
              help="Write data set NAME as .npy files in FOLDER (for data=npy:FOLDER data.stream=true).")
@click.option("--download", is_flag=True, help="With --export: fetch NAME when it is not found locally.")
def data(data_dir: str | None, export: tuple[str, str] | None, download: bool) -> None:
    """List every data set: where it was found, or the command that gets it."""
    from .data import describe_datasets, load_dataset

    if export:
        from .data.stream import save_npy

        name, folder = export
        ds = load_dataset(name, data_dir, download)
        click.echo(f"{save_npy(ds, folder)}: {len(ds.x_train)} training and {len(ds.x_test)} test images; "
                   f"train with data=npy:{folder} data.stream=true")
        return
    for row in describe_datasets(data_dir):
        where = row.get("found") or row.get("hint") or ""
        click.echo(f"{row['name']:14s} {'yes' if row.get('available') else 'no ':3s}  {where}")


@cli.command()
@click.option("--out", type=click.Path(), default="runs/demo", help="Where the demo writes its runs.")
def demo(out: str) -> None:
    """Train a conv autoencoder and a VAE on the embedded digits; write one report."""
    from .demo import run_demo

    click.echo(f"report: {run_demo(Path(out))}")


def main() -> None:
    from .report.plots import check_figure_mode

    try:
        check_figure_mode()  # a mistyped AELAB_FIGURES fails now, not after hours of training
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except AelabError as e:
        click.echo(f"aelab: error: {e}", err=True)
        sys.exit(e.exit_code)
