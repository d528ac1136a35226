"""Data-parallel training: two gloo processes under torchrun give the single-process result."""
import json
import os
import subprocess
import sys

import pytest
import torch

from aelab import distributed
from aelab.checkpoint import load_tensors
from aelab.data.stream import save_npy
from aelab.distributed import DistributedContext
from aelab.errors import ConfigError
from aelab.runs import train

KEYS = ["model=dense", "train.epochs=2", "train.batch_size=16", "train.progress=off", "train.device=cpu",
        "eval.tsne=false", "data.val_fraction=0.2"]


def test_shards_split_a_global_batch_without_overlap():
    idx = torch.arange(16)
    parts = [DistributedContext(r, 4).shard(idx) for r in range(4)]
    assert sorted(torch.cat(parts).tolist()) == list(range(16))
    assert all(len(p) == 4 for p in parts)
    assert torch.equal(DistributedContext().shard(idx), idx)  # one process: the whole batch
    with pytest.raises(ConfigError, match="divisible"):
        DistributedContext(0, 3).check_batch(16)


def test_single_process_is_not_distributed():
    assert not distributed.current().active and distributed.current().is_main


@pytest.mark.parametrize("stream", [False, True])  # True: images memory-mapped, read chunk by chunk per rank
def test_torchrun_two_processes_match_one_process(blobs, blobs_npz, tmp_path, stream):
    """Same global batch (16 = 2 x 8): the weights agree to float rounding; rank 0 alone writes."""
    data = [f"data=npy:{save_npy(blobs, tmp_path / 'npy')}", "data.stream=true", "data.chunk_rows=64"] \
        if stream else [f"data={blobs_npz}"]
    single = train(overrides=[*data, *KEYS, f"out_dir={tmp_path / 'one'}", "name=r"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "aelab",
           "train", *data, *KEYS, f"out_dir={tmp_path / 'two'}", "name=r"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two" / "r"
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["r"]
    assert json.loads((two / "config.json").read_text())["data"]["stream"] is stream
    assert not list(two.glob("*.tmp*")) and not (two / "checkpoint.safetensors").exists()
    assert len((two / "history.jsonl").read_text().splitlines()) == 2
    assert json.loads((two / "metrics.json").read_text())["meta"]["processes"] == 2
    a, _ = load_tensors(single / "model.safetensors")
    b, _ = load_tensors(two / "model.safetensors")
    for k in a:  # summation order differs (two half-batch means, then all-reduce): ~1e-7 relative
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    # the history's training loss is the mean over ranks, i.e. the global batch's loss
    h1 = [json.loads(r) for r in (single / "history.jsonl").read_text().splitlines()]
    h2 = [json.loads(r) for r in (two / "history.jsonl").read_text().splitlines()]
    assert h1[-1]["train.loss"] == pytest.approx(h2[-1]["train.loss"], rel=1e-4)


def test_torchrun_one_process_starts_the_group_and_matches(blobs_npz, tmp_path):
    """One process under torchrun takes the same path N do (a gloo group here, NCCL on a GPU):
    all-reduce over one rank is the identity, so the weights are the single-process ones, bit for bit."""
    single = train(overrides=[f"data={blobs_npz}", *KEYS, f"out_dir={tmp_path / 'one'}", "name=r"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "aelab",
           "train", f"data={blobs_npz}", *KEYS, f"out_dir={tmp_path / 'run'}", "name=r"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((tmp_path / "run" / "r" / "metrics.json").read_text())["meta"]
    assert (meta["processes"], meta["backend"]) == (1, "gloo")
    a, _ = load_tensors(single / "model.safetensors")
    b, _ = load_tensors(tmp_path / "run" / "r" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
