"""The study runner: what it records around a study's `run`, and its progress lines."""
import json
from dataclasses import dataclass

import pytest
import torch

from aelab.config import TrainConfig
from aelab.models import build_model
from aelab.studies import base


@dataclass
class _Config(base.StudyConfig):
    pass


RAN = []


class _Study:
    Config = _Config

    def run(self, cfg, out):
        RAN.append(True)
        return {"seeds_seen": [seed for _, seed in base.each_seed(cfg, "dummy")]}


def test_meta_records_the_commit_at_the_start_and_each_seed_says_so(tmp_path, monkeypatch, capsys):
    RAN.clear()
    monkeypatch.setattr(base, "git_commit", lambda: "at-end" if RAN else "at-start")
    monkeypatch.setitem(base._STUDIES, "dummy", _Study)
    path = base.run_study("dummy", overrides=[f"out_dir={tmp_path}", "seeds=2", "seed=5"])
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["meta"]["git_commit"] == "at-start"  # the code that ran, not HEAD when it ended
    assert metrics["seeds_seen"] == [5, 6]
    err = capsys.readouterr().err
    assert "dummy: seed 1/2 done" in err and "dummy: seed 2/2 done" in err


def test_train_seeds_batched_equals_one_by_one(blob_splits, monkeypatch):
    """batch_seeds=on trains the seeds as one vmapped model with the same result; auto on the CPU
    (where batching measured slower) trains them one after another."""
    train = TrainConfig(epochs=2, batch_size=16, progress="off", channels_last=False)
    build = lambda: build_model("conv", (1, 8, 8))  # noqa: E731
    calls, real = [], base.fit_seeds
    monkeypatch.setattr(base, "fit_seeds", lambda *a, **k: calls.append(1) or real(*a, **k))
    one = base.train_seeds(base.StudyConfig(batch_seeds="off"), build, blob_splits.train, train, [0, 1])
    assert not calls
    both = base.train_seeds(base.StudyConfig(batch_seeds="on"), build, blob_splits.train, train, [0, 1])
    assert calls == [1]
    for a, b in zip(one, both):
        for k, v in a.state_dict().items():
            torch.testing.assert_close(v, b.state_dict()[k], rtol=1e-4, atol=1e-5, msg=k)
    monkeypatch.setattr(base, "fit_seeds", lambda *a, **k: pytest.fail("batched on the CPU under auto"))
    base.train_seeds(base.StudyConfig(batch_seeds="auto"), build, blob_splits.train, train, [0, 1])
