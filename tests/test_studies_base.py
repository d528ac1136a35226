"""The study runner: what it records around a study's `run`, and its progress lines."""
import json
from dataclasses import dataclass

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
