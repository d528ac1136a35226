"""The CLI, run as a user runs it: `aelab ...` in a subprocess for the end-to-end paths, `main()`
in-process for the error table (faster; the same code path)."""
import json
import subprocess
import sys

import pytest

from aelab.cli import main

AELAB = [sys.executable, "-m", "aelab"]
FAST = ["train.epochs=2", "train.batch_size=32", "eval.tsne=false", "train.progress=lines"]


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["aelab", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_train_writes_every_artifact_and_report(tmp_path, blobs_npz, monkeypatch, capsys):
    cmd = AELAB + ["train", f"data={blobs_npz}", "model=conv", f"out_dir={tmp_path}", "name=r1", *FAST]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "r1"
    for name in ["config.json", "history.jsonl", "metrics.json", "model.safetensors", "report.html",
                 "figures/recon_grid.png", "figures/loss_curves.png", "figures/codes_pca.png"]:
        assert (run / name).is_file(), name
    assert not (run / "checkpoint.safetensors").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"train.mse", "test.mse", "gap.mse", "test.bce"} <= set(metrics)
    assert metrics["meta"]["finished"] and metrics["meta"]["seed"] == 0
    assert len((run / "history.jsonl").read_text().splitlines()) == 2
    assert "report:" in done.stdout

    # the refusals below run in this process (a fresh interpreter costs seconds): the same main(), exit code, stderr
    code, _, err = run_cli(monkeypatch, capsys, *cmd[3:])  # never overwrites
    assert code == 2 and "already exists" in err and "Traceback" not in err
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    code, _, err = run_cli(monkeypatch, capsys, "train", "--resume", str(run))
    assert code == 2 and "already finished" in err
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*")}  # changes nothing

    other = tmp_path / "other.npz"  # eval on images of another size: one line, not a traceback
    import numpy as np
    np.savez(other, x_train=np.zeros((20, 5, 5), np.uint8), y_train=np.arange(20) % 2,
             x_test=np.zeros((10, 5, 5), np.uint8), y_test=np.arange(10) % 2)
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(run), f"data=npz:{other}")
    assert code == 2 and "images are 1x5x5" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_vae_run_has_samples_and_elbo(tmp_path, blobs_npz, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "train", f"data={blobs_npz}", "model=vae", "model.arch=dense",
                             f"out_dir={tmp_path}", "name=v", *FAST)
    assert code == 0, err
    metrics = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert metrics["test.nelbo"] == pytest.approx(metrics["test.recon"] + metrics["test.kl"], rel=1e-4)
    assert (tmp_path / "v" / "figures" / "prior_samples.png").is_file()
    assert (tmp_path / "v" / "figures" / "interpolation.png").is_file()
    code, out, err = run_cli(monkeypatch, capsys, "eval", str(tmp_path / "v"), "eval.iw_samples=20")
    assert code == 0 and "test.iw_nll" in out


@pytest.mark.parametrize("args, fragment", [
    (["train", "train.epochz=3"], "unknown config key 'train.epochz'"),
    (["train", "train.epochs=-1"], "train.epochs must be > 0"),
    (["train", "model=nosuch"], "unknown model 'nosuch'"),
    (["train", "data=nosuch"], "nosuch"),
    (["train", "data=npz:/no/such/file.npz"], "/no/such/file.npz"),
    (["train", "missing.toml"], "missing.toml not found"),
    (["eval", "/no/such/run"], "not an aelab run folder"),
    (["report", "/no/such/run"], "not an aelab run folder"),
    (["report", "--markdown", "/no/such/run"], "no metrics.json"),
    (["train", "--resume", "/no/such/run"], "not an aelab run folder"),
    (["study", "nosuch"], "unknown study 'nosuch'"),
    (["train", "data=digits", "data.labels_per_class=500"], "asked for 500 labels of class"),
])
def test_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, args, fragment):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert fragment in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_models_lists_every_model_with_fields(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "models")
    from aelab.models import model_names

    assert code == 0
    for name in model_names():
        assert f"\n{name}: " in "\n" + out
    assert "model.latent_dim = " in out and "model.beta = " in out


def test_data_lists_sets(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "data")
    assert code == 0 and "digits" in out and "fashion-mnist" in out and "cifar10" in out


def test_report_markdown_prints_a_studys_tables(monkeypatch, capsys, tmp_path):
    summary = {"mean": 0.8, "std": 0.01, "ci95": [0.79, 0.81], "n": 3}
    metrics = {"N=100": {"arms": {"plain": {"test_acc": summary}, "lam=+1": {"test_acc": summary}},
                         "verdict": "computed"}, "meta": {"seed": 0}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    code, out, _ = run_cli(monkeypatch, capsys, "report", "--markdown", str(tmp_path), "--only", "N=100.arms")
    assert code == 0
    assert "| | test_acc |" in out and "| N=100 · arms · lam=+1 | 0.8 ± 0.01 |" in out
    assert "computed" not in out and "seed" not in out  # --only kept the arms; meta is never a table
    code, out, _ = run_cli(monkeypatch, capsys, "report", "--markdown", str(tmp_path), "--columns", "nosuch")
    assert code == 0 and "test_acc" not in out and "computed" in out


def test_only_rank_0_prints_the_summary(monkeypatch, capsys, tmp_path):
    """Under torchrun a rank > 0 may not see rank 0's run folder (no shared file system): it prints
    nothing rather than reading metrics.json and crashing."""
    from aelab import runs

    monkeypatch.setattr(runs, "train", lambda **kw: tmp_path)  # a folder without metrics.json, as rank 1 sees it
    monkeypatch.setenv("RANK", "1")
    code, out, err = run_cli(monkeypatch, capsys, "train", "model=dense")
    assert (code, out, err) == (0, "", "")
    monkeypatch.setenv("RANK", "0")  # rank 0 reads it: here, where it is missing, that would fail
    with pytest.raises(FileNotFoundError):
        run_cli(monkeypatch, capsys, "train", "model=dense")
