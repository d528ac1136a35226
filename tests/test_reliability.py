"""Nothing is lost: kill -9 at several points, SIGINT mid-epoch, a full disk, and bad checkpoints.

The kill tests run training in a child process that kills itself (SIGKILL, no clean-up) at a
chosen point, then resume with `aelab train --resume` and compare the final weights, bit for bit,
with a run that was never stopped.
"""
import errno
import json
import os
import pickle
import signal
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from aelab import checkpoint as ckpt
from aelab import engine
from aelab.cli import main
from aelab.config import TrainConfig
from aelab.data.stream import read_npy, save_npy, stream_splits
from aelab.errors import CheckpointError, DataError
from aelab.models import build_model

ARGS = ["model=dense", "train.epochs=3", "train.batch_size=16", "eval.tsne=false", "train.progress=off",
        "train.corrupt=dropout", "train.corrupt_level=0.2"]

# Runs `aelab train` in this process after arranging to SIGKILL itself at a chosen point.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import aelab.checkpoint, aelab.data.device
    from aelab.cli import main
    where, n = sys.argv[1], int(sys.argv[2])
    calls = {"batch": 0, "write": 0}
    if where == "batch":  # mid-epoch, before the n-th batch
        orig = aelab.data.device.DeviceData.batch
        def batch(self, idx):
            calls["batch"] += 1
            if calls["batch"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(self, idx)
        aelab.data.device.DeviceData.batch = batch
    else:  # "write": the n-th checkpoint write dies half way; "after": right after the n-th
        orig_write = aelab.checkpoint.atomic_write
        def write(path, data):
            if path.name == "checkpoint.safetensors":
                calls["write"] += 1
                if calls["write"] == n and where == "write":
                    with open(path.with_name("." + path.name + ".tmp-dead"), "wb") as f:
                        f.write(data[: len(data) // 2])
                    os.kill(os.getpid(), signal.SIGKILL)
            orig_write(path, data)
            if where == "after" and calls["write"] == n and path.name == "checkpoint.safetensors":
                os.kill(os.getpid(), signal.SIGKILL)
        aelab.checkpoint.atomic_write = write
    sys.argv = ["aelab", "train", *sys.argv[3:]]
    main()
""")


def aelab(*args, script=None, timeout=300):
    """`python -c script *args` or `aelab *args` in a child process (forked: torch is already imported)."""
    from conftest import forked

    return forked(*(["-c", script] if script else ["-m", "aelab"]), *args, timeout=timeout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run and the data it used: once per test session."""
    from conftest import once_per_session, write_blobs_npz

    def build(root):
        done = aelab("train", f"data={write_blobs_npz(root)}", f"out_dir={root}", "name=ref", *ARGS)
        assert done.returncode == 0, done.stderr
        return root

    root = once_per_session(tmp_path_factory, "reliability-ref", build)
    return [f"data=npz:{root / 'blobs.npz'}", *ARGS], load_file(root / "ref" / "model.safetensors")


@pytest.mark.parametrize("where, n", [("batch", 5), ("batch", 20), ("after", 1), ("write", 2)])
def test_kill_9_then_resume_gives_identical_weights(reference, tmp_path, where, n, monkeypatch):
    args, ref = reference
    run_args = [*args, f"out_dir={tmp_path}", "name=k"]
    killed = aelab(where, str(n), *run_args, script=CHILD)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    monkeypatch.setattr(sys, "argv", ["aelab", "train", "--resume", str(tmp_path / "k")])
    main()  # in this process, one thread as in the killed one: a fresh interpreter would only add its start
    weights = load_file(tmp_path / "k" / "model.safetensors")
    assert all(torch.equal(weights[k], ref[k]) for k in ref)
    history = [json.loads(line) for line in (tmp_path / "k" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]


@pytest.mark.parametrize("stream", [False, True])  # True: the same rows, memory-mapped and read in chunks
def test_sigint_mid_epoch_checkpoints_and_resumes_exactly(blobs, blob_splits, tmp_path, monkeypatch, stream):
    cfg = TrainConfig(epochs=2, batch_size=16, progress="off", corrupt="gaussian", corrupt_level=0.1)
    train = stream_splits(read_npy(save_npy(blobs, tmp_path / "npy")), "cpu", 0.2, 0, chunk_rows=64).train \
        if stream else blob_splits.train
    torch.manual_seed(0)
    full = build_model("dense", (1, 8, 8))
    engine.fit(full, train, cfg)

    calls = {"n": 0}
    orig = type(train).batch

    def batch(self, idx):  # SIGINT arrives while the 15th batch is in flight
        calls["n"] += 1
        if calls["n"] == 15:
            signal.raise_signal(signal.SIGINT)
        return orig(self, idx)

    monkeypatch.setattr(type(train), "batch", batch)
    torch.manual_seed(0)
    model = build_model("dense", (1, 8, 8))
    with pytest.raises(engine.TrainingInterrupted, match="resume with `aelab train --resume"):
        engine.fit(model, train, cfg, run_dir=tmp_path)
    monkeypatch.undo()
    _, doc = ckpt.load_tensors(tmp_path / engine.CHECKPOINT)
    assert doc["state"]["epoch"] == 1 and doc["state"]["batch"] == 3  # 12 batches an epoch: mid-epoch 2
    again = build_model("dense", (1, 8, 8))
    engine.fit(again, train, cfg, run_dir=tmp_path, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), again.state_dict().values()))


def test_disk_full_keeps_previous_checkpoint(blob_splits, tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=3, batch_size=16, progress="off")
    saves = {"n": 0}
    orig = os.replace

    def full_disk(src, dst):
        if str(dst).endswith(engine.CHECKPOINT):
            saves["n"] += 1
            if saves["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return orig(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*previous file is untouched"):
        engine.fit(build_model("dense", (1, 8, 8)), blob_splits.train, cfg, run_dir=tmp_path)
    monkeypatch.undo()
    _, doc = ckpt.load_tensors(tmp_path / engine.CHECKPOINT)
    assert doc["state"]["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temp file left behind


def test_checkpoint_that_is_a_pickle_is_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"w": Boom()}))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        ckpt.load_tensors(path)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_of_another_model_or_tampered_shape(tmp_path):
    dense = build_model("dense", (1, 8, 8))
    ckpt.save_model(tmp_path / "d.safetensors", dense, {})
    tensors, _ = ckpt.load_tensors(tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match="does not fit this model"):
        ckpt.load_state(build_model("conv", (1, 8, 8)), tensors, "d.safetensors")
    tensors["encoder.1.weight"] = torch.zeros(3, 64)
    with pytest.raises(CheckpointError, match=r"has shape \(3, 64\), the model expects \(32, 64\)"):
        ckpt.load_state(dense, tensors, "d.safetensors")


def test_images_that_do_not_fit_the_model(blob_splits):
    with pytest.raises(DataError, match="images are 1x8x8 .* built for 1x28x28"):
        engine.fit(build_model("dense", (1, 28, 28)), blob_splits.train, TrainConfig(epochs=1, progress="off"))


def test_error_path_closes_the_board_and_leaves_the_process_group(blobs_npz, tmp_path, monkeypatch):
    from aelab import distributed, runs

    closed = []

    class Board:  # stands in for TensorBoard's SummaryWriter
        def add_scalar(self, *args):
            pass

        def flush(self):
            pass

        def close(self):
            closed.append("board")

    def failing_fit(*args, on_epoch=None, **kw):  # one epoch logged, then a failure
        on_epoch({"epoch": 1, "step": 1, "train.loss": 1.0})
        raise RuntimeError("boom")

    monkeypatch.setattr(runs, "_tensorboard", lambda path: Board())
    monkeypatch.setattr(distributed, "teardown", lambda: closed.append("group"))
    monkeypatch.setattr(runs, "fit", failing_fit)
    with pytest.raises(RuntimeError, match="boom"):
        runs.train(overrides=[f"data={blobs_npz}", "model=dense", f"out_dir={tmp_path}", "train.epochs=1",
                              "train.progress=off"])
    assert closed == ["board", "group"]


def test_error_path_closes_the_progress_bar(blob_splits, monkeypatch):
    import aelab.progress
    from test_engine import Exploding

    bars = []
    real = aelab.progress.tqdm
    monkeypatch.setattr(aelab.progress, "tqdm", lambda *a, **kw: bars.append(real(*a, **kw)) or bars[-1])
    with pytest.raises(engine.TrainingDiverged):
        engine.fit(Exploding(), blob_splits.train, TrainConfig(epochs=1, batch_size=16, progress="bar"))
    assert bars and all(b.disable for b in bars)  # tqdm.close() sets disable
