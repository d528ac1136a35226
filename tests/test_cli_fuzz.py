"""Fuzz every file a command reads: query images and npz files, index folders, run folders (eval, report,
export, explore, index, train --resume), study folders (--status, --resume, report) and TOML configs.

Each example copies a valid folder built once per module (tiny blobs data), breaks one file (cut short,
random bytes, a patched header, a value of the wrong type, empty, a folder in its place, a symlink loop)
and runs the command in this process. The rule: exit 2 with one line naming the file and the problem, no
traceback, and the folder tree (names, sizes, mtimes, bytes) unchanged. Where a mutation leaves the file
valid (a patched byte inside a weight), the command may succeed (exit 0). A corrupt cell file is no error:
the cell runs again, said in one line.

    .venv/bin/pytest tests/test_cli_fuzz.py -q
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import numpy as np
import pytest
from conftest import Crash, crash_after, make_blobs, require, write_blobs_npz
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from test_data_fuzz import _mutations

from aelab import runs
from aelab.cli import main
from aelab.studies import base
from aelab.studies.base import Cell, Results, Study, StudyConfig

require("faiss", extra="index")
FUZZ = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck),
               phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])  # no slow "explain" phase
FAST = ["model=hash-bihalf", "model.latent_dim=16", "model.hidden=(32,)", "train.epochs=2", "train.batch_size=64",
        "eval.tsne=false", "eval.max_points=50", "train.progress=off"]
_ids = count()


# --------------------------------------------------------------------------- running a command, the rule


def cli(*args: object) -> tuple[int, str, str]:
    """`aelab ARGS` in this process: (exit code, stdout, stderr)."""
    out, err, argv = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = ["aelab", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: kind, size, mtime and a hash of a file's bytes (links are not followed)."""
    seen = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st_ = p.lstat()
            if p.is_symlink():
                seen[str(p)] = ("link", os.readlink(p))
            elif p.is_dir():
                seen[str(p)] = ("dir",)
            else:
                seen[str(p)] = ("file", st_.st_size, st_.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return seen


def check(root: Path, names: str | tuple[str, ...], *args: object, may_pass: bool = True) -> None:
    """Run `aelab ARGS`: exit 2, one line on stderr naming one of `names`, nothing on stdout, no traceback,
    nothing under root changed. With may_pass, exit 0 is accepted too (the mutation left a valid file)."""
    before = snapshot(root)
    code, out, err = cli(*args)
    if code == 0 and may_pass:
        return
    names = (names,) if isinstance(names, str) else names
    assert code == 2, f"exit {code}\n{out}\n{err}"
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and not out.strip(), f"{out}\n{err}"
    assert any(n in err for n in names), err
    assert snapshot(root) == before, err


# --------------------------------------------------------------------------- mutations of one file


@dataclass(frozen=True)
class Mutation:
    kind: str  # bytes | empty | folder | loop | missing
    data: bytes = b""

    def apply(self, path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        if self.kind in ("bytes", "empty"):
            path.write_bytes(self.data)
        elif self.kind == "folder":
            path.mkdir()
            (path / "x").write_text("a folder where a file should be")
        elif self.kind == "loop":
            path.symlink_to(path.name)  # a link to itself: ELOOP on open


def mutations(valid: bytes, header: int = 16, anywhere: bool = True) -> st.SearchStrategy[Mutation]:
    """Cut short, patched, random bytes, a patched header, empty, a folder in its place, a symlink loop.
    Without `anywhere`, no patch past the header (one inside a weight leaves a valid file that trains)."""
    cut = st.integers(0, max(len(valid) - 1, 0)).map(lambda i: valid[:i])
    patch_header = st.tuples(st.integers(0, min(header, len(valid))), st.binary(min_size=1, max_size=4)).map(
        lambda p: valid[:p[0]] + p[1] + valid[p[0] + len(p[1]):])
    raw = st.one_of(cut, patch_header, st.binary(max_size=300), *([_mutations(valid)] if anywhere else []))
    raw = raw.map(lambda b: Mutation("bytes", b))
    return st.one_of(raw, st.sampled_from([Mutation("empty"), Mutation("folder"), Mutation("loop")]))


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True),
                        st.text(max_size=4), st.lists(st.integers(-1, 3), max_size=3),
                        st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2))


@st.composite
def json_edits(draw, doc: dict) -> Mutation:
    """A valid JSON document with one value of the wrong type (or removed), or of another kind at the top."""
    flat = _paths(doc)
    if draw(st.integers(0, 9)) == 0:
        return Mutation("bytes", json.dumps(draw(st.one_of(st.lists(JSON_VALUES, max_size=3), JSON_VALUES))).encode())
    path = draw(st.sampled_from(flat))
    new = json.loads(json.dumps(doc))
    node = new
    for k in path[:-1]:
        node = node[k]
    if draw(st.booleans()) and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = draw(JSON_VALUES)
    return Mutation("bytes", json.dumps(new).encode())


def _paths(doc, prefix=()) -> list[tuple]:
    items = doc.items() if isinstance(doc, dict) else enumerate(doc[:3]) if isinstance(doc, list) else []
    out = []
    for k, v in items:
        out.append((*prefix, k))
        out += _paths(v, (*prefix, k))
    return out


def json_mutations(valid: bytes) -> st.SearchStrategy[Mutation]:
    return st.one_of(mutations(valid), json_edits(json.loads(valid)))


def fresh(work: Path, template: Path) -> Path:
    """A copy of `template` (links kept as links) in a folder of its own under work/."""
    dest = work / f"ex{next(_ids)}" / template.name
    shutil.copytree(template, dest, symlinks=True)
    return dest


# --------------------------------------------------------------------------- valid folders, built once


@dataclass(frozen=True)
class FuzzCell(Cell):
    pass


class FuzzToy(Study):
    """A study of 4 cells in microseconds: each stores a number and an array; one cell fails while
    `fail` names it, so the folder can be left unfinished."""

    @dataclass
    class Config(StudyConfig):
        fail: str = ""

    headline = "value"
    flaky = False  # the cell named by `fail` raises only while this is set

    def cells(self, cfg):
        return [FuzzCell(arm, s) for arm in ("a", "b") for s in range(cfg.seed, cfg.seed + cfg.seeds)]

    def run_cell(self, cfg, cell, ctx):
        if cell.key == cfg.fail and self.flaky:
            raise ValueError("planted failure")
        return {"value": float(cell.seed + len(cell.arm)), "curve": np.arange(3.0) * cell.seed}

    def summarize(self, cfg, results: Results, out):
        return {"values": results.column("value", arm="a")}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A finished hashing run and its index, a stopped run with a checkpoint, an unfinished and a
    finished study, all on the blobs (8x8): seconds."""
    from aelab.index import build_index
    from aelab.studies import runner

    root = tmp_path_factory.mktemp("valid")
    data = write_blobs_npz(root)
    run = runs.train(overrides=[f"data={data}", *FAST, f"out_dir={root}", "name=run"])
    index = build_index(run, data, root / "index")
    with pytest.MonkeyPatch.context() as mp:  # (no_server is function-scoped: it runs after this)
        mp.setattr("aelab.explore.server.serve", lambda *a, **k: None)
        assert cli("explore", run, "--port", "0", "--maps", "pca")[0] == 0  # writes its cache, explore.npz
    orig_fit = runs.fit

    def fit_then_crash(*a, on_epoch, **k):  # dies after epoch 1 is checkpointed, as a kill would
        hook = crash_after(1)
        return orig_fit(*a, on_epoch=lambda row: (on_epoch(row), hook(row)), **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runs, "fit", fit_then_crash)
        with pytest.raises(Crash):
            runs.train(overrides=[f"data={data}", *FAST, f"out_dir={root}", "name=stopped"])
    base._STUDIES["fuzz-toy"] = FuzzToy
    FuzzToy.study_name = "fuzz-toy"
    study = runner.run_study("fuzz-toy", overrides=[f"out_dir={root}", "name=study", "seeds=2", "workers=1"])
    FuzzToy.flaky = True
    with pytest.raises(runner.StudyFailed):
        runner.run_study("fuzz-toy", overrides=[f"out_dir={root}", "name=unfinished", "seeds=2", "workers=1",
                                                f"fail={FuzzCell('b', 1).key}"])
    FuzzToy.flaky = False  # a resume runs the failed cell and finishes
    unfinished = root / "unfinished"
    (root / "train.toml").write_text('[train]\nepochs = 1\nbatch_size = 64\nprogress = "off"\n[eval]\ntsne = false\n')
    (root / "study.toml").write_text("seeds = 1\nworkers = 1\n")
    yield {"root": root, "data": data, "run": run, "index": index, "stopped": root / "stopped", "study": study,
           "unfinished": unfinished}
    base._STUDIES.pop("fuzz-toy", None)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(autouse=True)
def no_server(monkeypatch):
    """`aelab explore` loads the run and returns instead of serving, `aelab export` loads the run and
    writes no ONNX graph (seconds each): their reading part is what is fuzzed."""
    monkeypatch.setattr("aelab.explore.server.serve", lambda *a, **k: None)
    monkeypatch.setattr("aelab.export.export_model", lambda model, out: {"files": {}, "not_exported": {}})


# --------------------------------------------------------------------------- query files


def image_bytes(suffix: str) -> bytes:
    """A valid 8x8 query image in the format its suffix names."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".pgm": "PPM", ".ppm": "PPM"}
    buf = io.BytesIO()
    img = Image.fromarray(make_blobs(n_train=1, n_test=1).x_train[0, 0])
    img.convert("RGB" if suffix == ".ppm" else "L").save(buf, format=fmt.get(suffix, suffix[1:].upper()))
    return buf.getvalue()


SUFFIXES = [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"]


@pytest.mark.parametrize("content", [b"this is a text file, not a photo\n", os.urandom(3000)])
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_query_photo_that_is_no_image_is_one_line(built, work, content, suffix):
    """The headline case: `aelab query INDEX photo.png` with a text file or random bytes named .png/.jpg."""
    folder = work / f"ex{next(_ids)}"
    folder.mkdir()
    (folder / f"photo{suffix}").write_bytes(content)
    check(folder, f"photo{suffix}", "query", built["index"], folder / f"photo{suffix}", f"out={folder / 'q.png'}",
          may_pass=False)


@FUZZ
@given(suffix=st.sampled_from(SUFFIXES), data=st.data())
def test_fuzz_query_images(built, work, suffix, data):
    folder = work / f"ex{next(_ids)}"
    folder.mkdir()
    target = folder / f"q{suffix}"
    target.write_bytes(image_bytes(suffix))
    assert cli("query", built["index"], target, f"out={folder / 'ok.png'}")[0] == 0  # valid before the mutation
    data.draw(mutations(image_bytes(suffix))).apply(target)
    check(folder, target.name, "query", built["index"], target, f"out={folder / 'q.png'}")


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


VALID_X = npz_bytes(x=make_blobs(n_train=3, n_test=1).x_train)
ARRAYS = hnp.arrays(st.sampled_from(["u1", "i8", "f4", "f8", "?", "c8", "U3", "M8[s]"]),
                    hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=9))


@FUZZ
@given(m=st.one_of(mutations(VALID_X, header=64),
                   st.dictionaries(st.sampled_from(["x", "codes", "y"]), ARRAYS, max_size=2)
                   .map(lambda d: Mutation("bytes", npz_bytes(**d)))))
def test_fuzz_query_npz(built, work, m):
    folder = work / f"ex{next(_ids)}"
    folder.mkdir()
    target = folder / "q.npz"
    m.apply(target)
    check(folder, "q.npz", "query", built["index"], target, f"out={folder / 'q.png'}")


# --------------------------------------------------------------------------- index folders


@FUZZ
@given(name=st.sampled_from(["index.json", "flat.faiss", "mih.faiss"]), data=st.data())
def test_fuzz_index_folder(built, work, name, data):
    ix = fresh(work, built["index"])
    valid = (ix / name).read_bytes()
    m = data.draw(json_mutations(valid) if name.endswith(".json") else mutations(valid, header=64))
    m.apply(ix / name)
    query = ix.parent / "q.npz"
    query.write_bytes(VALID_X)
    check(ix.parent, (name, "index.json"), "query", ix, query, "radius=3", f"out={ix.parent / 'q.png'}")


def test_an_index_folder_that_is_a_file_or_missing(built, work):
    folder = work / f"ex{next(_ids)}"
    folder.mkdir()
    (folder / "q.npz").write_bytes(VALID_X)
    (folder / "ix").write_text("not a folder")
    check(folder, "ix", "query", folder / "ix", folder / "q.npz", may_pass=False)
    check(folder, "nothing", "query", folder / "nothing", folder / "q.npz", may_pass=False)


# --------------------------------------------------------------------------- run folders


RUN_FILES = ["config.json", "metrics.json", "model.safetensors", "history.jsonl"]


def run_commands(run: Path) -> dict[str, list]:
    out = run.parent
    return {"eval": ["eval", run], "report": ["report", run], "markdown": ["report", "--markdown", run],
            "export": ["export", run, "--onnx", out / "onnx"],
            "explore": ["explore", run, "--port", "0", "--maps", "pca"],
            "index": ["index", run, f"data={{data}}", f"out={out / 'ix'}"]}


def safetensors_edits(valid: bytes) -> st.SearchStrategy[Mutation]:
    """A safetensors file whose JSON header is changed: a tensor of another shape or dtype, or other metadata."""
    n = struct.unpack("<Q", valid[:8])[0]
    head = json.loads(valid[8:8 + n])

    def rebuild(h: dict) -> Mutation:
        text = json.dumps(h).encode()
        return Mutation("bytes", struct.pack("<Q", len(text)) + text + valid[8 + n:])

    return json_edits(head).map(lambda m: rebuild(json.loads(m.data)) if m.data.startswith(b"{") else m)


def run_mutations(run: Path, name: str, anywhere: bool = True) -> st.SearchStrategy[Mutation]:
    valid = (run / name).read_bytes()
    if name.endswith(".json"):
        return json_mutations(valid)
    if name.endswith(".safetensors"):
        return st.one_of(mutations(valid, header=64, anywhere=anywhere), safetensors_edits(valid))
    return mutations(valid)


@FUZZ
@given(name=st.sampled_from(RUN_FILES), data=st.data(),
       command=st.sampled_from(["eval", "report", "markdown", "explore", "index", "export"]))
def test_fuzz_run_folder(built, work, name, command, data):
    run = fresh(work, built["run"])
    data.draw(run_mutations(run, name)).apply(run / name)
    args = [str(a).format(data=built["data"]) for a in run_commands(run)[command]]
    check(run.parent, (name, "run"), *args)


@FUZZ
@given(data=st.data())
def test_fuzz_explore_cache(built, work, data):
    """A broken explore.npz is no error: the codes and maps are computed again and the cache rewritten."""
    from aelab.explore.space import load_space

    run = fresh(work, built["run"])
    valid = (run / "explore.npz").read_bytes()
    arrays = st.dictionaries(st.sampled_from(["key", "codes", "map_pca"]), ARRAYS, max_size=3)
    data.draw(st.one_of(mutations(valid, header=64), arrays.map(lambda d: Mutation("bytes", npz_bytes(**d)))))\
        .apply(run / "explore.npz")
    code, out, err = cli("explore", run, "--port", "0", "--maps", "pca")
    assert code == 0 and "Traceback" not in err, err
    if (run / "explore.npz").is_file():  # rewritten, unless a folder stands in its way
        assert not load_space(run, maps=["pca"])[1]


@FUZZ
@given(name=st.sampled_from(["config.json", "checkpoint.safetensors"]), data=st.data())
def test_fuzz_train_resume(built, work, name, data):
    """(history.jsonl is not read: the checkpoint holds the history a resumed run rewrites.)"""
    run = fresh(work, built["stopped"])
    data.draw(run_mutations(run, name, anywhere=False)).apply(run / name)
    check(run.parent, (name, "stopped"), "train", "--resume", run)


def test_resume_names_the_config_whose_data_cannot_be_loaded(built, work):
    """Found by test_fuzz_train_resume: a config.json whose data name was garbled ('npz:' -> '\\x80z:') made
    `train --resume` fail with a line about the data set that did not say it came from config.json."""
    run = fresh(work, built["stopped"])
    doc = json.loads((run / "config.json").read_text())
    doc["data"]["name"] = "\x80z:" + doc["data"]["name"].split(":", 1)[1]
    (run / "config.json").write_text(json.dumps(doc))
    check(run.parent, "config.json", "train", "--resume", run, may_pass=False)


def test_a_run_folder_that_is_a_file_or_missing(built, work):
    folder = work / f"ex{next(_ids)}"
    folder.mkdir()
    (folder / "run").write_text("not a folder")
    for command in ("eval", "report", "markdown", "explore", "index", "export"):
        args = [str(a).format(data=built["data"]) for a in run_commands(folder / "run")[command]]
        check(folder, "run", *args, may_pass=False)
    check(folder, "run", "train", "--resume", folder / "run", may_pass=False)


# --------------------------------------------------------------------------- study folders


STUDY_FILES = ["config.json", "study.json", "cells/a.seed0.json", "cells/a.seed0.safetensors",
               "cells/b.seed1.failed.json"]


def study_mutations(study: Path, name: str) -> st.SearchStrategy[Mutation]:
    valid = (study / name).read_bytes()
    return json_mutations(valid) if name.endswith(".json") else mutations(valid, header=64)


@FUZZ
@given(name=st.sampled_from(STUDY_FILES), command=st.sampled_from(["--status", "--resume", "report"]),
       data=st.data())
def test_fuzz_study_folder(built, work, name, command, data):
    study = fresh(work, built["unfinished"] if command != "report" else built["study"])
    if not (study / name).exists():  # the finished study has no failed cell
        return
    data.draw(study_mutations(study, name)).apply(study / name)
    args = ["report", study] if command == "report" else ["study", command, study]
    if not name.startswith("cells/") or command == "report":
        check(study.parent, (Path(name).name, "study"), *args)
        return
    # a corrupt cell file is no error: --status counts the cell as not done, --resume runs it again
    # (a cell that then cannot be stored, its file replaced by a folder, is a failed cell: one line)
    code, out, err = cli(*args)
    assert code in (0, 2) and "Traceback" not in err, err
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err


def test_a_corrupt_cell_is_run_again_said_in_one_line(built, work):
    study = fresh(work, built["unfinished"])
    (study / "cells" / "a.seed0.json").write_text("{ cut sho")
    code, out, err = cli("study", "--status", study)
    assert code == 0 and "2 of 4 cells done" in out, out
    said = [line for line in out.splitlines() if "a.seed0" in line]
    assert len(said) == 1 and "run again" in said[0], out
    code, out, err = cli("study", "--resume", study)
    assert code == 0, err
    said = [line for line in err.splitlines() if "a.seed0" in line and "run again" in line]
    assert len(said) == 1, err
    assert json.loads((study / "cells" / "a.seed0.json").read_text())["key"] == "a.seed0"


def test_a_study_folder_that_is_a_file_or_missing(built, work):
    folder = work / f"ex{next(_ids)}"
    folder.mkdir()
    (folder / "s").write_text("not a folder")
    for args in (["study", "--status", folder / "s"], ["study", "--resume", folder / "s"], ["report", folder / "s"]):
        check(folder, "s", *args, may_pass=False)
    study = fresh(work, built["unfinished"])
    shutil.rmtree(study / "cells")
    (study / "cells").write_text("a file where the cells folder should be")
    for args in (["study", "--status", study], ["study", "--resume", study]):
        check(study.parent, "cells", *args, may_pass=False)


# --------------------------------------------------------------------------- TOML configs


@settings(FUZZ, max_examples=8)  # a valid edit trains a run or runs the toy study: the slowest examples
@given(kind=st.sampled_from(["train", "study"]), data=st.data())
def test_fuzz_toml_configs(built, work, kind, data):
    folder = work / f"ex{next(_ids)}"
    folder.mkdir()
    target = folder / f"{kind}.toml"
    valid = (built["root"] / f"{kind}.toml").read_bytes()
    value = st.one_of(st.integers(-2, 3), st.text(max_size=3), st.booleans(), st.lists(st.integers(0, 2), max_size=2))
    keys = ["train.epochs", "seeds", "train.nosuch", "model", "data", "eval", "workers"]
    edit = st.tuples(st.sampled_from(keys), value).map(  # a line at the end: in the last table, or top-level
        lambda kv: (Mutation("bytes", valid + f"\n{kv[0]} = {json.dumps(kv[1])}\n".encode()), kv[0]))
    m, key = data.draw(st.one_of(mutations(valid).map(lambda m: (m, None)), edit))
    m.apply(target)
    out = folder / "out"
    args = (["train", target, f"data={built['data']}", f"out_dir={out}", "name=t"] if kind == "train" else
            ["study", "fuzz-toy", target, f"out_dir={out}", "name=t", "workers=1"])
    # a value out of range is named by its key (the check runs once the command line is applied too)
    check(folder, (f"{kind}.toml", key.split(".")[-1]) if key else f"{kind}.toml", *args)
