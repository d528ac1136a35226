"""MLflow tracking: a run logs into a local file store and MLflow's own client reads it back; a dead
server warns once and the run still finishes; a study's cells become child runs of one parent.

    .venv/bin/python -m pytest tests/test_tracking.py -q
"""
from __future__ import annotations

import json
import socket
import sys

import pytest

from conftest import require  # noqa: E402

require("mlflow", extra="mlflow")

from aelab import tracking  # noqa: E402
from aelab.errors import ConfigError  # noqa: E402
from aelab.runs import train  # noqa: E402

FAST = ["train.epochs=2", "train.batch_size=32", "eval.tsne=false", "train.progress=off", "model=dense"]


@pytest.fixture(autouse=True)
def _file_store(monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _client(uri: str):
    from mlflow.tracking import MlflowClient  # here: collection in every test worker never imports MLflow

    return MlflowClient(uri)


def only_run(client, **tags):
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    runs = [r for r in client.search_runs([exp.experiment_id])
            if all(r.data.tags.get(k) == v for k, v in tags.items())]
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_train_logs_params_epochs_metrics_and_artifacts(tmp_path, blobs_npz):
    uri = (tmp_path / "mlruns").as_uri()
    path = train(overrides=[f"data={blobs_npz}", f"out_dir={tmp_path}", "name=tracked", "tracking=mlflow",
                            f"tracking_uri={uri}", *FAST])
    client = _client(uri)
    run = only_run(client, **{"aelab.kind": "run"})
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert json.loads((path / "tracking.json").read_text())["run_id"] == run.info.run_id

    params = run.data.params  # the whole config, dotted
    assert params["model.name"] == "dense" and params["train.epochs"] == "2" and params["data.name"] == blobs_npz
    assert params["tracking"] == "mlflow"

    history = [json.loads(line) for line in (path / "history.jsonl").read_text().splitlines()]
    logged = client.get_metric_history(run.info.run_id, "epoch/train.loss")
    assert [(m.step, m.value) for m in logged] == [(r["epoch"], pytest.approx(r["train.loss"])) for r in history]
    assert len(client.get_metric_history(run.info.run_id, "epoch/val.loss")) == 2

    metrics = json.loads((path / "metrics.json").read_text())
    assert run.data.metrics["test.mse"] == pytest.approx(metrics["test.mse"])
    assert run.data.metrics["meta.train_seconds"] == pytest.approx(metrics["meta"]["train_seconds"])

    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "model.safetensors", "config.json", "metrics.json", "history.jsonl", "figures"} <= top
    assert "tracking.json" not in top
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert "figures/recon_grid.png" in figures


def test_dead_server_warns_once_and_training_finishes(tmp_path, blobs_npz, capfd):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = train(overrides=[f"data={blobs_npz}", f"out_dir={tmp_path}", "name=dead", "tracking=mlflow",
                            f"tracking_uri=http://127.0.0.1:{port}", *FAST])
    assert json.loads((path / "metrics.json").read_text())["meta"]["finished"]
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if "MLflow tracking" in line]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0] and "training goes on" in warnings[0]


def test_resumed_run_continues_its_mlflow_run(tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    folder = tmp_path / "run"
    folder.mkdir()
    first = tracking.start("mlflow", uri, "run", {"a": 1}, folder=folder)
    first.log_metrics({"x": 1.0}, step=1)
    first.finish("KILLED")
    again = tracking.start("mlflow", uri, "run", {"a": 2}, folder=folder)  # what --resume does
    again.log_metrics({"x": 2.0}, step=2)
    again.finish()
    client = _client(uri)
    run = client.get_run(first.run_id)
    assert again.run_id == first.run_id and run.info.status == "FINISHED"
    assert run.data.params == {"a": "1"}  # the stored config is what ran; not logged twice
    assert [m.value for m in client.get_metric_history(first.run_id, "x")] == [1.0, 2.0]


def test_study_cells_are_child_runs_of_one_parent(tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    parent = tracking.start("mlflow", uri, "few-label-digits", {"seeds": 2, "data": {"name": "digits"}},
                            tags={"aelab.kind": "study"})
    for seed in (0, 1):
        parent.log_cell(f"ae.n100.seed{seed}", {"arm": "ae", "seed": seed, "n": 100},
                        {"test_acc": 0.8 + seed / 10, "curve": [1, 2], "note": "text", "ok": True})
    parent.log_metrics({"ae": {"test_acc": {"mean": 0.85}}})
    parent.finish()
    client = _client(uri)
    study = only_run(client, **{"aelab.kind": "study"})
    assert study.data.params == {"seeds": "2", "data.name": "digits"}
    assert study.data.metrics == {"ae.test_acc.mean": 0.85}
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    cells = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{study.info.run_id}'")
    assert sorted(c.info.run_name for c in cells) == ["ae.n100.seed0", "ae.n100.seed1"]
    cell = next(c for c in cells if c.info.run_name.endswith("seed1"))
    assert cell.data.params == {"arm": "ae", "seed": "1", "n": "100"}
    assert cell.data.metrics == {"test_acc": pytest.approx(0.9)}  # numbers only: no list, text or bool
    assert cell.info.status == "FINISHED"


def test_tracking_none_logs_nothing_and_mlflow_missing_is_one_line(tmp_path, monkeypatch):
    t = tracking.start("none", "", "x", {"a": 1}, folder=tmp_path)
    t.log_metrics({"a": 1.0}), t.log_artifacts(tmp_path), t.finish()
    assert not any(tmp_path.iterdir())
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'aelab\[mlflow\]'"):
        tracking.require("mlflow")


def test_default_uri_is_a_local_mlruns_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri("") == (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert tracking.resolve_uri("") == "http://example.invalid:5000"
    assert tracking.resolve_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_a_study_logs_a_parent_run_with_a_child_run_per_cell(tmp_path):
    from aelab.studies import run_study

    uri = (tmp_path / "mlruns").as_uri()
    path = run_study("features", overrides=["workers=1", f"out_dir={tmp_path}", "seeds=2", "steps=12",
                                            "train.device=cpu", "models=['dense']", "units=4",
                                            "tracking=mlflow", f"tracking_uri={uri}"])
    client = _client(uri)
    study = only_run(client, **{"aelab.kind": "study"})
    assert study.info.run_name == path.name and study.info.status == "FINISHED"
    assert study.data.params["study"] == "features" and study.data.params["seeds"] == "2"
    assert "tracking" not in study.data.params  # how cells run is not what the study computes
    metrics = json.loads((path / "metrics.json").read_text())
    assert study.data.metrics == pytest.approx(tracking.numeric(metrics))
    top = {a.path for a in client.list_artifacts(study.info.run_id)}
    assert {"report.html", "metrics.json", "config.json"} <= top and "cells" not in top

    stored = {p.stem: json.loads(p.read_text()) for p in (path / "cells").glob("*.json")}
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    cells = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{study.info.run_id}'")
    assert sorted(c.info.run_name for c in cells) == sorted(stored) and len(stored) == 2
    for c in cells:
        record = stored[c.info.run_name]
        assert c.data.params == {k: str(v) for k, v in record["cell"].items()}
        assert c.data.metrics == pytest.approx(tracking.numeric(record["result"]))
        assert c.data.metrics  # each cell has numbers to show
