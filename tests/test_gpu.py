"""The CUDA path, run for real; skipped without a GPU. `pytest -m gpu` (benchmarks/gpu_check.sh runs it).

fit, compile (once per architecture), amp (bf16 where the GPU has it natively, the fp16 + GradScaler
path forced), batched seeds, resume after kill -9 (bit-exact under deterministic algorithms), a
1-GPU torchrun run on NCCL, and streamed chunks through pinned memory.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: deterministic matmuls

from aelab import amp, compile_cache  # noqa: E402
from aelab.batched import SeedStack, fit_seeds  # noqa: E402
from aelab.checkpoint import load_tensors  # noqa: E402
from aelab.config import TrainConfig  # noqa: E402
from aelab.data.device import to_device  # noqa: E402
from aelab.data.stream import read_npy, save_npy, stream_splits  # noqa: E402
from aelab.engine import CHECKPOINT, evaluate, fit  # noqa: E402
from aelab.models import build_model  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
FAST = dict(batch_size=16, progress="off")
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)}


@pytest.fixture
def gpu(blobs):
    return to_device(blobs, "cuda", val_fraction=0.2, seed=0)


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 comparisons mean fp32: no TF32 in cuDNN convolutions or matmuls while these tests run."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def fresh_and_trained(splits, name="conv", seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model(name, (1, 8, 8))
    before = evaluate(model.cuda(), splits.test)["loss"]
    history = fit(model, splits.train, TrainConfig(**{"epochs": 3, **FAST, **kw}), val=splits.val, seed=seed)
    return model, before, evaluate(model, splits.test)["loss"], history


@pytest.mark.parametrize("mode", ["off", "auto", "fp16"])
def test_fit_trains_on_the_gpu_in_each_precision(gpu, mode):
    model, before, after, history = fresh_and_trained(gpu, amp=mode, compile="off")
    assert next(model.parameters()).is_cuda and after < 0.9 * before
    assert all(torch.isfinite(torch.tensor(r["train.loss"])) for r in history)


def test_auto_precision_is_native_bf16_else_fp16_with_a_scaler():
    native = torch.cuda.get_device_capability()[0] >= 8
    assert amp.cuda_bf16() == native
    chosen = amp.choose("auto", torch.device("cuda"), build_model("dense", (1, 8, 8)))
    assert chosen.dtype == (torch.bfloat16 if native else torch.float16) and chosen.scaled == (not native)
    assert amp.choose("auto", torch.device("cuda"), build_model("linear", (1, 8, 8))).dtype is None


def test_fp16_scaler_is_checkpointed_and_resumed_exactly(gpu, tmp_path):
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn_only: an op without a deterministic
    try:  # kernel warns instead of failing; bit-exactness below shows whether the step used any
        cfg = TrainConfig(epochs=3, amp="fp16", compile="off", **FAST)
        (tmp_path / "full").mkdir()
        torch.manual_seed(0)
        full = build_model("dense", (1, 8, 8))
        fit(full, gpu.train, cfg, run_dir=tmp_path / "full")
        torch.manual_seed(0)
        _crash_at(build_model("dense", (1, 8, 8)), gpu.train, cfg, tmp_path, epoch=2)
        torch.manual_seed(1)  # other initial weights: the checkpoint must replace them
        again = build_model("dense", (1, 8, 8))
        fit(again, gpu.train, cfg, run_dir=tmp_path, resume=True)
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), again.state_dict().values()))
    saved = load_tensors(tmp_path / CHECKPOINT)[1]["scalers"]
    assert saved == load_tensors(tmp_path / "full" / CHECKPOINT)[1]["scalers"] and saved["model"]["scale"] > 0


class _Crash(Exception):
    pass


def _crash_at(model, train, cfg, run_dir, epoch):
    def stop(row):
        if row["epoch"] == epoch:
            raise _Crash

    with pytest.raises(_Crash):
        fit(model, train, cfg, run_dir=run_dir, on_epoch=stop)


def test_compile_once_per_architecture_on_the_gpu(gpu):
    from torch._dynamo.utils import counters

    compile_cache.clear()
    torch._dynamo.reset()
    counters.clear()
    results = [fresh_and_trained(gpu, seed=s, compile="on", amp="off", epochs=2) for s in range(3)]
    assert counters["stats"]["unique_graphs"] == 1  # three fits, one trace: weights swapped in
    _, _, eager, _ = fresh_and_trained(gpu, seed=0, compile="off", amp="off", epochs=2)
    assert results[0][2] == pytest.approx(eager, rel=1e-2)  # inductor's fused kernels round differently
    assert all(after < 0.9 * before for _, before, after, _ in results)


def test_batched_seeds_equal_separate_fits_on_the_gpu(gpu):
    cfg = TrainConfig(epochs=2, amp="off", compile="off", channels_last=False, **FAST)
    build = lambda: build_model("conv", (1, 8, 8))  # noqa: E731
    separate = []
    for s in (0, 1, 2):
        torch.manual_seed(s)
        m = build()
        fit(m, gpu.train, cfg, seed=s)
        separate.append(m)
    batched, _ = fit_seeds(build, [0, 1, 2], gpu.train, cfg)
    for a, b in zip(separate, batched):
        for k, v in a.state_dict().items():
            torch.testing.assert_close(v, b.state_dict()[k], rtol=1e-3, atol=1e-4, msg=k)
    # in bf16 (the GPU default) a stack trains too, validation per seed
    stack = SeedStack(build, [0, 1])
    history = fit(stack, gpu.train, TrainConfig(epochs=3, compile="off", **FAST), val=gpu.val)  # compiled: bench_seeds
    assert len(history[-1]["val.loss"]) == 2 and history[-1]["train.loss"][0] < history[0]["train.loss"][0]


CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.use_deterministic_algorithms(True, warn_only=True)  # the report's figures may use ops without one
    import aelab.data.device
    from aelab.cli import main
    n = int(sys.argv[1])
    if n:  # SIGKILL (no clean-up) before the n-th batch is read
        calls, orig = {"n": 0}, aelab.data.device.DeviceData.batch
        def batch(self, idx):
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(self, idx)
        aelab.data.device.DeviceData.batch = batch
    sys.argv = ["aelab", "train", *sys.argv[2:]]
    main()
""")


def child(*args):
    return subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=300, env=ENV)


def test_kill_9_then_resume_is_bit_exact_on_the_gpu(blobs_npz, tmp_path):
    """A VAE (the global CUDA RNG draws its samples), fused AdamW, bf16 autocast, dropout corruption."""
    args = [f"data={blobs_npz}", "model=vae", "model.arch=dense", "train.device=cuda", "train.epochs=3",
            "train.batch_size=16", "train.compile=off", "train.corrupt=dropout", "train.corrupt_level=0.2",
            "train.progress=off", "eval.tsne=false", f"out_dir={tmp_path}"]
    ref = child("0", *args, "name=ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = child("20", *args, "name=k")
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = child("0", "--resume", str(tmp_path / "k"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "k" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_one_gpu_runs_on_nccl(blobs_npz, tmp_path):
    keys = [f"data={blobs_npz}", "model=dense", "train.device=cuda", "train.epochs=2", "train.batch_size=16",
            "train.compile=off", "train.amp=off", "train.progress=off", "eval.tsne=false", "name=r"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "aelab",
           "train", *keys, f"out_dir={tmp_path / 'nccl'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((tmp_path / "nccl" / "r" / "metrics.json").read_text())["meta"]
    assert (meta["processes"], meta["backend"]) == (1, "nccl")
    plain = subprocess.run([sys.executable, "-m", "aelab", "train", *keys, f"out_dir={tmp_path / 'plain'}"],
                           capture_output=True, text=True, timeout=300, env=ENV)
    assert plain.returncode == 0, plain.stderr[-3000:]
    a, b = (load_file(tmp_path / d / "r" / "model.safetensors") for d in ("nccl", "plain"))
    for k in a:  # all-reduce over one rank is the identity; only kernel scheduling may differ
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_streamed_chunks_come_through_pinned_memory(blobs, gpu, tmp_path):
    streamed = stream_splits(read_npy(save_npy(blobs, tmp_path / "npy")), "cuda", 0.2, 0, chunk_rows=64)
    perm = streamed.train.permutation(torch.Generator("cuda").manual_seed(0))  # chunk-major, on the host
    for i in range(0, len(perm) - 16, 16):
        got, want = streamed.train.batch(perm[i:i + 16]), gpu.train.batch(perm[i:i + 16].cuda())
        assert got["x"].is_cuda and torch.equal(got["x"], want["x"]) and torch.equal(got["y"], want["y"])
    assert torch.equal(streamed.test.batch(slice(5, 50))["x"], gpu.test.batch(slice(5, 50))["x"])
    assert streamed.train._pinned is not None and streamed.train._pinned.is_pinned()
    _, before, after, _ = fresh_and_trained(streamed, name="dense", compile="off")
    assert after < 0.9 * before
