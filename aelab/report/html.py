"""Self-contained HTML pages built only from a run folder's artifacts; nothing here trains or plots.

A run folder (written by the engine and the studies) holds:

    config.json      the resolved run config (nested dict)
    metrics.json     metric name -> number, a {"mean", "std", "ci95", "n"} summary or a nested
                     group; "meta" holds seed, aelab_version, git_commit, device, train_seconds, started
    history.jsonl    one JSON dict per epoch
    figures/         *.png and *.gif drawn by aelab.report.plots

`write_report(run_dir)` turns them into run_dir/report.html with every figure embedded as a base64
data URI, so the single file can be mailed, archived or opened offline. `write_index(run_dirs, out)`
writes one page comparing runs, a row each, linked to their reports. Only config.json is required;
any other artifact may be missing (a run killed early) and the page says so.

    python -c "from aelab.report import write_report; print(write_report('runs/conv-digits'))"
"""
from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..atomic import atomic_write_text
from ..errors import CheckpointError
from ..readers import read_json, read_jsonl

# Figures a run usually draws, in the order a reader wants them; any others follow alphabetically.
PREFERRED_FIGURES = ("recon_grid", "loss_curves", "codes_pca", "codes_tsne", "prior_samples", "interpolation")
_FIGURE_TYPES = {".png": "image/png", ".gif": "image/gif"}
_CAPTION_WORDS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP", "mse": "MSE", "vae": "VAE", "2d": "2-D"}
_META_FIELDS = (  # (key in metrics["meta"], how the page says it)
    ("seed", "seed {}"),
    ("aelab_version", "aelab {}"),
    ("git_commit", "commit {}"),
    ("git_commits", "commits {}"),  # a study: the commits its cells came from
    ("device", "on {}"),
    ("train_seconds", "trained in {} s"),
    ("started", "started {}"),
)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;max-width:1100px;
 margin:2em auto;padding:0 1em}
h1{margin:0 0 .2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#666;margin:0}.empty{color:#888;font-style:italic}
table{border-collapse:collapse;margin:.5em 0}
th,td{border-bottom:1px solid #e4e4e4;padding:.25em .9em;text-align:left;vertical-align:top}
th{background:#f6f6f6;position:sticky;top:0}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:92%}.scroll{max-height:28em;overflow:auto;display:inline-block}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;margin-top:.3em}
"""


class _Html(str):
    """Text that is already HTML (a link built here): table cells pass it through unescaped."""


@dataclass
class _Run:
    """Everything a page shows about one run, read from its folder."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]  # without "meta"
    meta: dict[str, Any]
    history: list[dict[str, Any]] | None  # None: no history.jsonl
    skipped_lines: int  # unreadable history lines (a run killed mid-write)
    figures: list[Path]

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.name)

    def section(self, key: str) -> str:
        """config[key]["name"], e.g. the model or data name, or "" when absent."""
        value = self.config.get(key)
        return str(value.get("name", "")) if isinstance(value, dict) else str(value or "")


# ----------------------------------------------------------------------------- reading artifacts


def _figure_key(path: Path) -> tuple[int, str]:
    stem = path.stem
    rank = PREFERRED_FIGURES.index(stem) if stem in PREFERRED_FIGURES else len(PREFERRED_FIGURES)
    return rank, stem


def _read_run(run_dir: str | Path) -> _Run:
    """Read a run folder; CheckpointError when it is missing, has no config.json or holds a corrupt file."""
    path = Path(run_dir)
    if not path.is_dir() or not (path / "config.json").exists() and not (path / "config.json").is_symlink():
        raise CheckpointError(f"{path} is not an aelab run folder (no config.json)")
    config = read_json(path / "config.json")
    metrics = dict(read_json(path / "metrics.json", default={}))
    meta = metrics.pop("meta", None)
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta.setdefault("seed", config.get("seed"))
    session = read_json(path / "study.json", default={})  # a study's wall time lives beside its metrics
    if _is_number(session.get("train_seconds")):
        meta.setdefault("train_seconds", round(float(session["train_seconds"]), 1))
    history, skipped = read_jsonl(path / "history.jsonl")
    figures_dir = path / "figures"
    figures = [p for p in figures_dir.glob("*") if p.suffix.lower() in _FIGURE_TYPES and p.is_file()]
    return _Run(path, config, metrics, meta, history, skipped, sorted(figures, key=_figure_key))


# ----------------------------------------------------------------------------- formatting values


def _is_summary(value: Any) -> bool:
    """A metric summarised over seeds: {"mean": .., "std": .., "ci95": [lo, hi], "n": ..}."""
    return isinstance(value, dict) and _is_number(value.get("mean"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_number(value: int | float) -> str:
    """4 significant digits for floats; integers (epochs, counts) exactly."""
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def format_value(value: Any) -> str:
    """Plain text for a metric or config value: numbers to 4 digits, summaries as `mean ± std [lo, hi]`."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if _is_number(value):
        return format_number(value)
    if _is_summary(value):
        text = format_number(value["mean"])
        if _is_number(value.get("std")):
            text += f" ± {format_number(value['std'])}"
        ci = value.get("ci95")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(map(_is_number, ci)):
            text += f" [{format_number(ci[0])}, {format_number(ci[1])}]"
        if _is_number(value.get("n")):
            text += f" (n={format_number(value['n'])})"
        return text
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _flatten(tree: Mapping[str, Any], keep_summaries: bool, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as (dotted.key, leaf) pairs in file order; summaries stay leaves when asked."""
    pairs = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not (keep_summaries and _is_summary(value)):
            pairs += _flatten(value, keep_summaries, f"{name}.")
        else:
            pairs.append((name, value))
    return pairs


def _cell(value: Any, tag: str = "td") -> str:
    """One escaped table cell; numbers and summaries right-aligned."""
    if isinstance(value, _Html):
        return f"<{tag}>{value}</{tag}>"
    numeric = _is_number(value) or _is_summary(value)
    attr = ' class="num"' if numeric and tag == "td" else ""
    return f"<{tag}{attr}>{escape(format_value(value))}</{tag}>"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(_cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _empty(text: str) -> str:
    return f'<p class="empty">{escape(text)}</p>'


# ----------------------------------------------------------------------------- report sections


def caption(path: str | Path) -> str:
    """A figure's caption from its file name: recon_grid.png -> "Recon grid", codes_tsne -> "Codes t-SNE"."""
    words = Path(path).stem.replace("-", "_").split("_")
    text = " ".join(_CAPTION_WORDS.get(w.lower(), w) for w in words if w)
    return text[:1].upper() + text[1:]


def _meta_line(run: _Run) -> str:
    """model · data, then seed · aelab version · commit · ...: what a reader needs to reproduce it."""
    parts = [f"{key} {run.section(key)}" for key in ("model", "data") if run.section(key)]
    for key, template in _META_FIELDS:
        value = run.meta.get(key)
        if value is None or value == "":
            continue
        text = ", ".join(map(str, value)) if isinstance(value, list) else format_value(value)
        parts.append(template.format(_short_commit(text) if key == "git_commit" else text))
    return f'<p class="meta">{escape(" · ".join(parts))}</p>' if parts else ""


def _short_commit(commit: str) -> str:
    """A full hash cut to 12 characters; a `+dirty` mark kept."""
    bare = commit.removesuffix("+dirty")
    return bare[:12] + commit[len(bare):]


def _metrics_section(run: _Run) -> str:
    rows = _flatten(run.metrics, keep_summaries=True)
    return "<h2>Metrics</h2>\n" + (_table(("metric", "value"), rows) if rows else _empty("no metrics"))


def _figure(path: Path) -> str:
    """One figure embedded as a data URI, so the page needs no other file."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    mime = _FIGURE_TYPES[path.suffix.lower()]
    text = escape(caption(path))
    return (
        f'<figure id="{escape(path.stem)}"><img src="data:{mime};base64,{data}" alt="{text}">'
        f"<figcaption>{text}</figcaption></figure>"
    )


def _figures_section(run: _Run) -> str:
    body = "\n".join(_figure(p) for p in run.figures) if run.figures else _empty("no figures")
    return "<h2>Figures</h2>\n" + body


def _history_section(run: _Run) -> str:
    if not run.history:
        return "<h2>History</h2>\n" + _empty("no history")
    columns: dict[str, None] = {}
    for row in run.history:
        columns.update(dict.fromkeys(row))
    rows = [[row.get(c) for c in columns] for row in run.history]
    note = f" ({run.skipped_lines} unreadable lines skipped)" if run.skipped_lines else ""
    return (
        f"<h2>History</h2>\n<p>{len(rows)} epochs{escape(note)}</p>\n"
        f'<div class="scroll">{_table(list(columns), rows)}</div>'
    )


def _config_section(run: _Run) -> str:
    # Dotted keys, exactly as a command-line override names them (model.code_dim=16).
    rows = [
        (key, _Html(f"<code>{escape(json.dumps(value, ensure_ascii=False))}</code>"))
        for key, value in _flatten(run.config, keep_summaries=False)
    ]
    return "<h2>Config</h2>\n" + _table(("key", "value"), rows)


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# ----------------------------------------------------------------------------- public pages


def _verdicts(tree: Any, path: str = "") -> list[str]:
    """Every computed verdict line of a study's metrics: string values under a key naming a verdict,
    a bar or an answer."""
    if isinstance(tree, Mapping):
        return [line for k, v in tree.items() if k != "answer" for line in _verdicts(v, f"{path}.{k}")]
    last = path.rsplit(".", 1)[-1]
    named = any(w in path for w in ("verdict", "answer")) or last == "bar"
    return [tree] if isinstance(tree, str) and named else []


def _lead_section(run: _Run) -> str:
    """A study's answer first: its verdict lines, the main table (arms x sizes, mean and interval) with
    each arm's convergence status, and the small-multiples figure of every arm's validation curves."""
    ans = run.metrics.get("answer") or {}
    lines = "".join(f"<li>{escape(v)}</li>" for v in _verdicts(run.metrics))
    parts = ["<h2>Answer</h2>", f"<ul class=\"verdicts\">{lines}</ul>" if lines else _empty("no verdicts")]
    table, status = ans.get("table") or {}, ans.get("status") or {}
    sizes = list(dict.fromkeys(s for by in table.values() for s in by))
    if table:
        def cell(s):
            lo, hi = s["ci95"]
            return f"{format_number(s['mean'])} [{format_number(lo)}, {format_number(hi)}]"
        rows = [[arm, *[cell(by[s]) if s in by else "" for s in sizes], status.get(arm, "")] for arm, by in table.items()]
        parts += [f"<p>{escape(ans['metric'])}: mean [{escape(ans['interval'])}]</p>",
                  _table(["arm", *sizes, "status"], rows)]
    elif status:
        parts.append(_table(["arm", "status"], list(status.items())))
    curves = [p for p in run.figures if p.name == "curves.png"]
    return "\n".join(parts + [_figure(p) for p in curves])


def write_report(run_dir: str | Path) -> Path:
    """Write run_dir/report.html from the run's artifacts alone and return its path. A study's page
    leads with its answer (verdicts, main table with statuses, curves), then figures, metrics, config.

    Raises CheckpointError when `run_dir` is missing, has no config.json, or holds corrupt JSON.
    """
    run = _read_run(run_dir)
    if "study" in run.config:
        lead = _lead_section(run)
        run.figures = [p for p in run.figures if p.name != "curves.png"]
        body = "\n".join((f"<h1>{escape(run.name)}</h1>", _meta_line(run), lead, _figures_section(run),
                          _metrics_section(run), _config_section(run)))
        out = run.path / "report.html"
        atomic_write_text(out, _page(f"aelab study: {run.name}", body))
        return out
    body = "\n".join(
        (
            f"<h1>{escape(run.name)}</h1>",
            _meta_line(run),
            _metrics_section(run),
            _figures_section(run),
            _history_section(run),
            _config_section(run),
        )
    )
    out = run.path / "report.html"
    atomic_write_text(out, _page(f"aelab run: {run.name}", body))
    return out


def _index_columns(runs: Sequence[_Run]) -> list[str]:
    """The union of the runs' top-level numeric (or summarised) metrics, in first-seen order."""
    columns: dict[str, None] = {}
    for run in runs:
        columns.update({k: None for k, v in run.metrics.items() if _is_number(v) or _is_summary(v)})
    return list(columns)


def write_index(run_dirs: Sequence[str | Path], out: str | Path, write_reports: bool = True,
                figures: bool = False) -> Path:
    """Write one page comparing runs, a row each: name (linked to its report), model, data, metrics.

    Links are relative to `out`, so the folder tree can be moved or served as it is. With
    `write_reports` each run's report.html is (re)written first, so no link is dead or stale.
    """
    out = Path(out)
    runs = [_read_run(d) for d in run_dirs]
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = _index_columns(runs)
    rows = []
    for run in runs:
        report = write_report(run.path) if write_reports else run.path / "report.html"
        href = quote(Path(os.path.relpath(report, out.parent)).as_posix())
        link = _Html(f'<a href="{escape(href)}">{escape(run.name)}</a>')
        fixed = [link, run.section("model"), run.section("data"), run.meta.get("seed")]
        rows.append(fixed + [run.metrics.get(c) for c in columns])
    header = ["run", "model", "data", "seed", *columns]
    body = f"<h1>aelab runs</h1>\n<p class=\"meta\">{len(runs)} run{'' if len(runs) == 1 else 's'}</p>\n"
    body += _table(header, rows) if runs else _empty("no runs")
    if figures:  # each run's figures too, so the page alone shows the runs (the demo's report)
        body += "".join(f"<h2>{escape(run.name)}</h2>\n" + "\n".join(_figure(p) for p in run.figures)
                        for run in runs)
    atomic_write_text(out, _page("aelab runs", body))
    return out
