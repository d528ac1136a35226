"""The semi study: its grid, its choices on validation, its verdicts, and the quick run on digits.

    .venv/bin/pytest tests/test_semi.py -q
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aelab import stats
from aelab.data.device import DeviceData
from aelab.errors import ConfigError
from aelab.studies import run_study, study_status
from aelab.studies.base import Cell, Results
from aelab.studies.semi import ARMS, REFERENCE, SemiStudy, SemiStudyConfig, with_labels
from aelab.studies.semi_report import summarize


def test_grid_tunes_before_the_baseline_and_pretrains_before_its_users():
    cfg = SemiStudyConfig(seeds=2, labels=(100, 1000), tune_lr=(1e-3, 1e-2), tune_arch=("mlp", "conv-strided"),
                          tune_noise=(0.3,))
    study = SemiStudy()
    grid = study.cells(cfg)
    keys = [c.key for c in grid]
    assert len(set(keys)) == len(keys)
    arms = [c for c in grid if ":" not in c.arm]
    assert len(arms) == len(ARMS) * 2 * 2 + 2  # every arm, label count and seed, and the ceiling
    assert {c.n for c in arms if c.arm == "supervised"} == {100, 1000, 0}
    tune = study.needs(cfg, Cell("supervised", 1, 1000))
    assert tune == [Cell(f"tune:supervised:{a}:noise=0.3:lr={lr}", 0, 1000) for a in ("mlp", "conv-strided")
                    for lr in ("0.001", "0.01")]
    assert all(t in grid for t in tune)
    assert study.needs(cfg, Cell("m2", 1, 100)) == [Cell("pretrain:m1", 1, 0)]
    assert study.needs(cfg, Cell("pretrain-finetune", 0, 1000)) == [Cell("pretrain:ae", 0, 0)]
    assert study.needs(cfg, Cell("ladder-full", 0, 100)) == []
    assert study.needs(cfg, Cell("vat", 1, 100)) == [Cell(f"tune:vat:eps={e}", 0, 100) for e in ("0.3", "1", "3")]
    assert not [c for c in grid if c.arm.startswith("tune:vat") and c.n == 0]  # VAT has no ceiling cells


def test_labels_are_kept_per_seed_and_class_balanced():
    y = torch.arange(500) % 10
    train = DeviceData(torch.zeros(500, 1, 2, 2, dtype=torch.uint8), y)
    a, b = with_labels(train, 100, 0), with_labels(train, 100, 1)
    assert torch.bincount(a.y[a.y >= 0]).tolist() == [10] * 10 and (a.y >= 0).sum() == 100
    assert not torch.equal(a.y, b.y) and torch.equal(a.y, with_labels(train, 100, 0).y)
    assert with_labels(train, 0, 0) is train  # every label: the ceiling


def test_bad_configs_are_one_line_errors(tmp_path):
    for bad, says in (("arms=['sen', 'ladder-full']", "supervised missing"), ("tune_arch=['cnn']", "tune_arch"), ("arms=['supervised', 'nope']", "nope"),
                      ("labels=[105]", "labels=105"), ("data.val_fraction=0.0", "validation"), ("steps.m2=0", "steps.m2")):
        with pytest.raises(ConfigError, match=says):
            run_study("semi", overrides=["data=digits", f"out_dir={tmp_path}", bad])


def _rows(arm: str, n: int, accs: list[float], vals: list[float] | None = None) -> list[dict]:
    return [{"arm": arm, "seed": s, "n": n, "test_acc": a, "val_acc": (vals or accs)[s], "seconds": 1.0,
             "n_labels": n or 1000} for s, a in enumerate(accs)]


def test_bar_takes_the_best_arm_on_validation_and_pairs_it_with_the_baseline(tmp_path):
    cfg = SemiStudyConfig(seeds=3, labels=(100,), arms=("supervised", "ladder-full", "m2"), tune_lr=(1e-3,),
                          tune_arch=("mlp", "conv-strided"), tune_noise=(0.0,))
    rows = (_rows("supervised", 100, [0.70, 0.71, 0.72]) + _rows("supervised", 0, [0.9, 0.9, 0.91])
            # m2 has the higher test accuracy, ladder the higher validation accuracy: the ladder is chosen
            + _rows("ladder-full", 100, [0.80, 0.82, 0.81], [0.9, 0.9, 0.9])
            + _rows("m2", 100, [0.85, 0.86, 0.84], [0.5, 0.5, 0.5])
            + [{"arm": f"tune:supervised:{a}:noise=0:lr=0.001", "seed": 0, "n": n, "val_acc": v, "seconds": 1.0}
               for n in (100, 0) for a, v in (("mlp", 0.7), ("conv-strided", 0.75))])
    m = summarize(cfg, Results(rows), tmp_path)
    bar = m["bar"]
    assert bar["best_arm"] == "ladder-full" and bar["met"] and bar["beats_supervised"]
    d = stats.paired([0.80, 0.82, 0.81], [0.70, 0.71, 0.72])
    assert bar["best_minus_supervised"] == d and bar["verdict"].startswith("ladder-full (chosen on validation): 0.810")
    assert m["comparisons"]["m2 - supervised @100"]["verdict"].endswith("better")
    assert m["tuning"]["100"]["chosen_lr"] == 1e-3 and m["tuning"]["100"]["chosen_arch"] == "conv-strided"
    assert m["accuracy"]["supervised"]["all"]["mean"] == pytest.approx(0.9033, abs=1e-4)
    assert (tmp_path / "figures" / "accuracy_vs_labels.png").exists()
    rows = [r if r["arm"] != "ladder-full" else {**r, "test_acc": r["test_acc"] - 0.10} for r in rows]
    bar = summarize(cfg, Results(rows), tmp_path)["bar"]  # 0.71: below the bar and level with the baseline
    assert not bar["met"] and not bar["beats_supervised"] and "misses the 0.80 bar by 0.090" in bar["verdict"]


def test_quick_study_on_digits(tmp_path):
    path = run_study("semi", overrides=["data=digits", "quick=true", "workers=1", f"out_dir={tmp_path}",
                                        "val_small=50", "budget=0.25"])  # a quarter of the preset's steps: 1.125%
    m = json.loads((path / "metrics.json").read_text())
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["seeds"] == 2 and cfg["labels"] == [100]  # the preset is stored as it ran
    assert set(m["accuracy"]) == set(ARMS) and m["accuracy"]["supervised"]["all"]["n"] == 2
    assert set(m["comparisons"]) == {f"{a} - supervised @100" for a in ARMS if a != "supervised"}
    assert m["n_labels"] == {"100": 100, "all": m["n_labels"]["all"]} and m["n_labels"]["all"] > 1000
    tried = m["tuning"]["100"]["val_acc"]
    t = m["tuning"]["100"]
    assert f"{t['chosen_arch']} noise={t['chosen_noise']:.0e} lr={t['chosen_lr']:.0e}" == max(tried, key=tried.get)
    # wall time lives in the cell files and --status, never in metrics.json (which resume rewrites bit for bit)
    spent = study_status(path)["seconds_by_arm"]
    assert "seconds" not in m and spent["tune"] > 0 and not any(k.startswith("tune:") for k in spent)
    cells = {p.stem: json.loads(p.read_text()) for p in (path / "cells").glob("*.json")}
    lr = m["tuning"]["100"]["chosen_lr"]
    sup = next(v for k, v in cells.items() if k.startswith("supervised.n100.seed0"))
    from safetensors.numpy import load_file
    curve = load_file(path / "cells" / sup["arrays"]["file"])["curve"]  # (points, 2): step, validation accuracy
    assert sup["result"]["val_acc"] == curve[:, 1].max()  # the best point was kept
    assert sup["result"]["best_step"] == curve[curve[:, 1].argmax(), 0] and curve[-1, 0] == 18  # 1.125% of 1,620
    assert sum(m["status"]["ladder-full"].values()) == 2 and sup["result"]["status"] in m["status"]["supervised"]
    for suffix, bar in (("", m["bar"]), ("_small", m["bar_small_val"])):  # VAT is in its own league
        assert bar["best_arm"] == max((a for a in ARMS if a != "supervised" and a not in REFERENCE),
                                      key=lambda a: np.mean([v["result"][f"val_acc{suffix}"] for k, v in cells.items()
                                                             if k.startswith(f"{a}.n100.")]))
        d = [v["result"][f"test_acc{suffix}"] for a in (bar["best_arm"], "vat") for k, v in sorted(cells.items())
             if k.startswith(f"{a}.n100.")]
        assert bar[f"{bar['best_arm']} - vat"]["diff"]["mean"] == pytest.approx(np.mean(d[:2]) - np.mean(d[2:]))
    # the few-label protocol: 50 labelled validation images, every cell's point and every setting chosen again
    assert m["validation_size"]["small"] == 50 and m["validation_size"]["held-out split"] == 144  # 10% of the 1,437 training digits
    assert all(v["result"]["val_small"] == 50 for k, v in cells.items() if not k.startswith("pretrain"))
    eps = {float(k.split("eps=")[1].split(".n100")[0]): v["result"]["val_acc_small"] for k, v in cells.items()
           if k.startswith("tune_vat")}
    assert m["tuning"]["100"]["vat_chosen_eps_small"] == max(eps, key=eps.get)
    assert m["accuracy_small_val"]["vat"]["100"]["mean"] == pytest.approx(np.mean(
        [v["result"]["test_acc_small"] for k, v in cells.items() if k.startswith("vat.n100.")]))
    for name in ("accuracy_vs_labels", "style_class_m2", "style_class_aae", "ladder_denoised"):
        assert (path / "figures" / f"{name}.png").exists(), name
    assert lr in (1e-3, 3e-3)
    # the ladders' test-time statistics probe: ours (running) against the authors' (the labelled rows)
    probe = m["test_time_statistics"]
    assert set(probe) == {"ladder-full @100", "ladder-gamma @100", "supervised @100"}  # the baseline: a ladder net too
    assert all(("test_acc_labelled_stats" in v["result"]) == (v["cell"]["n"] > 0)  # not the ceiling's cells
               for k, v in cells.items() if k.startswith("supervised."))
    for a in ("ladder-full", "ladder-gamma"):
        rows = [v["result"] for k, v in sorted(cells.items()) if k.startswith(f"{a}.n100.")]
        p = probe[f"{a} @100"]
        assert p["test_running"]["mean"] == pytest.approx(np.mean([r["test_acc"] for r in rows]))
        assert p["labelled - running"]["mean"] == pytest.approx(
            np.mean([r["test_acc_labelled_stats"] - r["test_acc"] for r in rows]))
        assert p["chosen_on_validation"] == max(p["val"], key=p["val"].get)
        assert f"on test: {stats.verdict(p['labelled - running'])} (" in p["verdict"]
        assert p["verdict"].endswith("theirs" if p["chosen_on_validation"] == "labelled" else "ours")


def test_any_npz_data_set_and_class_count(tmp_path, blobs_npz):
    """Real MNIST comes as IDX files or `npz:`; the study takes any class count (the blobs have four)."""
    path = run_study("semi", overrides=[f"data={blobs_npz}", "quick=true", "workers=1", f"out_dir={tmp_path}",
                                        "labels=[20]", "arms=['supervised', 'ladder-full', 'm2']", "seeds=2",
                                        "budget=0.5"])
    m = json.loads((path / "metrics.json").read_text())
    assert m["n_labels"]["20"] == 20 and set(m["accuracy"]) == {"supervised", "ladder-full", "m2"}
    assert m["accuracy"]["supervised"]["all"]["mean"] > 0.5  # four easy classes: well above chance (0.25)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quick_study_on_a_gpu(tmp_path):
    """Pools, pretrained weights and figures on the GPU (bf16 autocast and compile on, as `auto` sets them)."""
    path = run_study("semi", overrides=["data=digits", "quick=true", "workers=1", "train.device=cuda",
                                        f"out_dir={tmp_path}"])
    m = json.loads((path / "metrics.json").read_text())
    assert set(m["accuracy"]) == set(ARMS) and m["accuracy"]["supervised"]["all"]["mean"] > 0.2


def test_a_killed_long_cell_resumes_from_its_last_pass(tmp_path, monkeypatch):
    """A study cell of CHECKPOINT_STEPS or more checkpoints each pass (a paper-budget ladder cell trains for
    hours): killed mid-run, it continues from its last pass with its curves and best points (on the
    validation split and on the small set), and ends exactly where an uninterrupted run ends."""
    from aelab.config import TrainConfig
    from aelab.data import load_dataset
    from aelab.data.device import to_device
    from aelab.models.ladder import LadderConfig
    from aelab.studies import budget as budget_mod
    from aelab.studies import semi_arms as arms

    monkeypatch.setattr(budget_mod, "CHECKPOINT_STEPS", 10)
    splits = to_device(load_dataset("digits"), torch.device("cpu"), 0.1, 0)
    data, small = with_labels(splits.train, 50, 0), with_labels(splits.val, 30, 0).labelled()
    cfg = LadderConfig(name="ladder", variant="full", hidden=(32,), latent_dim=16)
    train = TrainConfig(batch_size=100, progress="off", schedule="cosine")  # Budget sets steps and points

    def run(workdir):
        return arms.train_pooled(cfg, data, splits.val, arms.Budget(60, 2e-3, 100), train, 0, workdir=workdir,
                                 small=small)

    whole, sel = run(None)
    calls, real = {"n": 0}, arms.accuracy

    def dies_at_the_fifth_point(model, d):
        calls["n"] += 1
        if calls["n"] == 9:  # the 5th curve point's small-set read, mid-run (both sets are read per point)
            raise KeyboardInterrupt
        return real(model, d)

    monkeypatch.setattr(arms, "accuracy", dies_at_the_fifth_point)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cell")
    assert (tmp_path / "cell" / "checkpoint.safetensors").exists() and (tmp_path / "cell" / arms.BEST).exists()
    counted = {"n": 0}

    def counting(model, d):
        counted["n"] += 1
        return real(model, d)

    monkeypatch.setattr(arms, "accuracy", counting)
    again, sel2 = run(tmp_path / "cell")
    # 20 points (every 3 steps), passes of 12 steps: killed at the 5th point (step 15), the checkpoint
    # of pass 1 (step 12) holds the first 4, and the resumed run reads the other 16 on both sets
    assert len(sel.curve.points) == 20 and counted["n"] == 2 * 16
    assert sel2.curve.points == sel.curve.points and sel2.small.curve.points == sel.small.curve.points
    for k, v in whole.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    for k, v in sel.small.best.items():
        assert torch.equal(v, sel2.small.best[k]), k


def test_a_setting_the_small_validation_set_prefers_is_trained_too(monkeypatch):
    """Under the few-label protocol a tuned arm takes the setting its tuning cells score best on the small
    validation set; where the held-out split chose another, the cell trains both and reads each
    protocol's test accuracy off its own model."""
    from aelab.config import DataConfig
    from aelab.studies.base import CellContext
    from aelab.studies.semi_report import quick_preset

    cfg = quick_preset(SemiStudyConfig(data=DataConfig(name="digits"), val_small=50, arms=("supervised", "vat")))
    study, trained = SemiStudy(), []
    real = study._train

    def spy(cfg, cell, ctx, data, val, setting, workdir, small):
        trained.append(setting)
        return real(cfg, cell, ctx, data, val, setting, workdir, small)

    monkeypatch.setattr(study, "_train", spy)
    deps = {Cell("tune:vat:eps=0.3", 0, 100).key: {"val_acc": 0.9, "val_acc_small": 0.5},
            Cell("tune:vat:eps=1", 0, 100).key: {"val_acc": 0.5, "val_acc_small": 0.9}}
    row = study.run_cell(cfg, Cell("vat", 1, 100), CellContext(torch.device("cpu"), deps, "t"))
    assert trained == [0.3, 1.0] and row["val_small"] == 50
    assert 0 < row["test_acc"] and 0 < row["test_acc_small"]
    trained.clear()
    deps[Cell("tune:vat:eps=1", 0, 100).key]["val_acc_small"] = 0.1  # both protocols choose 0.3: one model
    study.run_cell(cfg, Cell("vat", 1, 100), CellContext(torch.device("cpu"), deps, "t"))
    assert trained == [0.3]


def test_a_pick_keeps_the_first_of_tied_best_points(monkeypatch, tmp_path):
    """With 100 validation images accuracies tie often: the weights kept are those of the first best
    point, the step the cell reports (argmax), in memory and in the checkpointing cell's file."""
    from aelab.checkpoint import load_tensors
    from aelab.studies import semi_arms

    accs = iter([0.5, 0.8, 0.7, 0.8, 0.8])
    monkeypatch.setattr(semi_arms, "accuracy", lambda model, data: next(accs))
    model = torch.nn.Linear(1, 1, bias=False)
    pick = semi_arms.Pick("val.acc_small", None, semi_arms.BEST_SMALL)
    for step in range(1, 6):
        with torch.no_grad():
            model.weight.fill_(step)  # the weights say which step they are from
        pick.observe({"step": step}, model, tmp_path)
    curve = pick.curve.array()
    first = int(curve[np.argmax(curve[:, 1]), 0])
    assert first == 2 and float(pick.best["weight"]) == first
    assert float(load_tensors(tmp_path / semi_arms.BEST_SMALL)[0]["weight"]) == first
