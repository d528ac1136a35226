"""Budgets in steps and the convergence statuses, through real study runs on tiny data (issue 20)."""
from __future__ import annotations

import json

import pytest
import torch

from test_cli import run_cli
from aelab.config import TrainConfig
from aelab.data.device import to_device
from aelab.errors import ConfigError
from aelab.studies import run_study
from aelab.studies.hashing import HashingConfig, ae_codes, status, train_ae

FEATURES = ["workers=1", "seeds=1", "models=['dense']", "units=2", "top=2"]


def test_a_short_budget_is_still_improving_and_a_normal_one_converged(tmp_path, blobs_npz):
    for steps, want in ((4, "still improving"), (300, "converged")):
        path = run_study("features", overrides=[*FEATURES, f"data={blobs_npz}", f"steps={steps}",
                                                f"out_dir={tmp_path}", f"name=s{steps}"])
        m = json.loads((path / "metrics.json").read_text())
        assert m["status"] == {"dense": {want: 1}}
        cell = json.loads((path / "cells" / "dense.seed0.json").read_text())
        assert cell["result"]["status"] == want


def test_the_budget_multiplier_scales_every_arms_steps(tmp_path, blobs_npz):
    path = run_study("features", overrides=[*FEATURES, f"data={blobs_npz}", "steps=40", "budget=0.25",
                                            f"out_dir={tmp_path}"])
    from safetensors.numpy import load_file
    arrays = json.loads((path / "cells" / "dense.seed0.json").read_text())["arrays"]["file"]  # named by hash
    curve = load_file(path / "cells" / arrays)["curve"]
    assert curve[-1, 0] == 10  # 40 steps x 0.25; the curve's last point is the last step


def test_hash_codes_that_collapse_give_collapsed(blobs):
    splits = to_device(blobs, "cpu", 0.0, 0)
    cfg = HashingConfig(hidden=(32,), steps=21, train=TrainConfig(batch_size=32, lr=1.0, progress="off"))
    model, curve = train_ae(cfg, blobs.shape, "hash-ste", 8, {}, splits.train, 0)  # a rate far too high
    got = status(curve, ae_codes(model, splits.train, [], 8, 0)[""][0])
    assert got["status"] == "collapsed" and got["collapse"] == "1 distinct codes for 240 images"


def test_a_collapsed_cell_prints_a_warning(capsys):
    from aelab.studies.executors import Outcome
    from aelab.studies.runner import _Progress

    progress = _Progress(2, 0, 1)
    progress.bar = None
    row = {"status": "collapsed", "collapse": "1 distinct codes for 240 images"}
    progress.cell(Outcome("hash-ste.n8.seed0", True, 1.0, row=row), "map")
    progress.cell(Outcome("itq.n8.seed0", True, 1.0, row={"status": "converged"}), "map")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "warning: hash-ste.n8.seed0 collapsed (1 distinct codes" in err


@pytest.mark.parametrize("bad, match", [("budget=0", "budget=0"), ("budget=-1.5", "budget=-1.5"),
                                        ("steps=0", "steps=0"), ("clf_steps=0", "clf_steps=0")])
def test_a_bad_budget_is_one_line_exit_2_and_writes_nothing(tmp_path, blobs_npz, monkeypatch, capsys, bad, match):
    study = "few-label" if bad.startswith("clf") else "features"
    with pytest.raises(ConfigError, match=match):
        run_study(study, overrides=["workers=1", f"data={blobs_npz}", f"out_dir={tmp_path / 'runs'}", bad])
    code, _, err = run_cli(monkeypatch, capsys, "study", study, f"data={blobs_npz}", f"out_dir={tmp_path / 'runs'}", bad)
    err = err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and match in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_plan_prints_each_arms_steps_and_an_estimate_and_writes_nothing(tmp_path, blobs_npz, monkeypatch, capsys):
    runs = tmp_path / "runs"
    code, out, err = run_cli(monkeypatch, capsys, "study", "features", f"data={blobs_npz}", f"out_dir={runs}",
                             "models=['dense','conv']", "steps=40", "budget=0.5", "seeds=2", "workers=1", "--plan")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("plan: study features, 4 cells, budget x0.5, 1 workers")
    for arm in ("dense", "conv"):
        row = next(line for line in lines if line.split()[0] == arm)
        assert "2 cells  20 steps at batch 128" in row and "ms/step" in row
    wall = float(lines[-1].split("estimated wall time: ")[1].split()[0])
    assert lines[-1].startswith("estimated wall time:") and wall >= 0
    assert not runs.exists()  # a plan writes nothing


def test_plan_without_the_data_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "study", "features", f"data=npz:{tmp_path / 'none.npz'}",
                             f"out_dir={tmp_path / 'runs'}", "--plan")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_status_estimates_the_cells_left(tmp_path, blobs_npz, monkeypatch, capsys):
    path = run_study("features", overrides=[*FEATURES, f"data={blobs_npz}", "steps=20", "seeds=2",
                                            f"out_dir={tmp_path}"])
    (path / "metrics.json").unlink()
    (path / "cells" / "dense.seed1.json").unlink()  # as if the study had stopped before its last cell
    code, out, err = run_cli(monkeypatch, capsys, "study", "--status", str(path))
    assert code == 0, err
    assert "1 of 2 cells done" in out and "1 remaining" in out
    assert "left: study features, 1 cells" in out and "dense" in out and "estimated wall time" in out


def test_the_study_report_leads_with_the_answer(tmp_path, blobs_npz):
    """Verdicts, the main table with statuses and the curves first; then figures; then metrics and config."""
    path = run_study("features", overrides=[*FEATURES, f"data={blobs_npz}", "steps=30", "seeds=2",
                                            "models=['dense','sparse']", f"out_dir={tmp_path}"])
    m = json.loads((path / "metrics.json").read_text())
    html = (path / "report.html").read_text()
    marks = ["<h2>Answer</h2>", m["sparse_vs_dense_near_zero"]["verdict"].split(" [")[0][:30], 'id="curves"',
             "<h2>Figures</h2>", 'id="weights_dense"', "<h2>Metrics</h2>", "<h2>Config</h2>"]
    where = [html.find(x) for x in marks]
    assert -1 not in where and where == sorted(where), dict(zip(marks, where))
    table = m["answer"]["table"]["dense"]["all"]  # near_zero: a fraction, so its interval stays in [0, 1]
    assert 0 <= table["ci95"][0] <= table["mean"] <= table["ci95"][1] <= 1 and "clipped" in m["answer"]["interval"]
    assert m["answer"]["status"]["dense"].endswith(("converged", "still improving"))


def test_study_report_modules_never_import_their_study():
    """A report module takes the study's results and config; the study imports it, never the reverse
    (aelab.studies imports every study, so this reads the sources rather than sys.modules)."""
    import ast
    from pathlib import Path

    import aelab.studies

    folder = Path(aelab.studies.__file__).parent
    for study, report in [("hashing", "hashing_report"), ("memorization", "memorization_report"),
                          ("semi", "semi_report"), ("generation", "generation_figures")]:
        tree = ast.parse((folder / f"{report}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1}
        assert study not in imported, f"{report} imports .{study}"


def test_a_budget_owns_its_arm_not_every_arm_sharing_its_prefix():
    from aelab.studies.budget import ArmBudget
    from aelab.studies.embedding import EmbeddingConfig, EmbeddingStudy

    assert not ArmBudget("ae", 10, 8).owns("ae_2d") and ArmBudget("ae", 10, 8).owns("ae")
    assert ArmBudget("sup", 10, 8, match=("tune:",)).owns("tune:sup:lr=0.1")
    budgets = EmbeddingStudy().budgets(EmbeddingConfig())
    owners = {arm: [b.arm for b in budgets if b.owns(arm)][0] for arm in ("ae", "ae_2d", "linear", "pixels")}
    assert owners == {"ae": "ae", "ae_2d": "ae_2d", "linear": "linear", "pixels": "pixels"}


def test_status_names_a_checkpointed_cell_and_counts_its_steps_as_done(tmp_path, blobs_npz, monkeypatch, capsys):
    """A long cell of a stopped study left a training checkpoint (studies/executors.partial_dir): --status
    names it with its step and its curve's last point, and the estimate of what is left does not count
    those steps again."""
    from aelab.checkpoint import read_training
    from aelab.config import TrainConfig
    from aelab.data import load_dataset
    from aelab.data.device import to_device
    from aelab.engine import fit
    from aelab.models import build_model
    from aelab.studies import plan
    from aelab.studies.executors import partial_dir

    path = run_study("features", overrides=[*FEATURES, f"data={blobs_npz}", "steps=40", "seeds=2",
                                            f"out_dir={tmp_path}"])
    (path / "metrics.json").unlink()
    (path / "cells" / "dense.seed1.json").unlink()
    data = to_device(load_dataset(blobs_npz), torch.device("cpu"), 0.0, 0).train
    (partial_dir(path, "dense.seed1")).mkdir(parents=True)
    fit(build_model("dense", tuple(data.x.shape[1:])), data, TrainConfig(steps=12, batch_size=8, progress="off",
                                                                         eval_every=5), val=data,
        run_dir=partial_dir(path, "dense.seed1"))
    evals = read_training(partial_dir(path, "dense.seed1") / "checkpoint.safetensors")[1]["state"]["evals"]
    code, out, err = run_cli(monkeypatch, capsys, "study", "--status", str(path))
    assert code == 0, err
    assert "in progress: dense.seed1 at step 12 " in out and "12 steps already trained" in out
    assert [p["step"] for p in evals] == [5, 10, 12]  # the status line shows the last, not the first
    assert f"last curve point, step 12: val.loss {evals[-1]['val.loss']:.4g}" in out
    monkeypatch.setattr(plan, "probe", lambda *a: (0.01, 0.5))  # 10 ms a step, 0.5 s an evaluation
    left = plan.left(path)["arms"]["dense"]
    assert left["done_steps"] == 12 and left["seconds"] == pytest.approx((40 - 12) * 0.01 + 16 * 0.5)


def test_the_probe_is_timed_while_the_other_workers_train(tmp_path, blobs_npz):
    """Cells that run at once share the cores: `busy` keeps workers - 1 processes training the arm for
    as long as the probe runs, all of them ready before it starts, and none left after it."""
    import multiprocessing as mp

    from aelab.config import make_config
    from aelab.studies import plan
    from aelab.studies.base import get_study

    cls = get_study("features")
    cfg = make_config(cls.Config(), None, [*FEATURES, f"data={blobs_npz}", "steps=20", "workers=2"])
    with plan.busy("features", cfg, "dense", 1):
        helpers = mp.active_children()
        assert len(helpers) == 1 and helpers[0].is_alive()
    assert not helpers[0].is_alive() and helpers[0].exitcode == 0  # stopped when asked, not killed
    with plan.busy("features", cfg, "dense", 0):
        assert not mp.active_children()
