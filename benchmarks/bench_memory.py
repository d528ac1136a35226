"""Peak resident memory when training from memory-mapped data, streamed to the device in chunks.

    python benchmarks/bench_memory.py --write-results    # Fashion-MNIST, and a synthetic set 20x larger
    python benchmarks/bench_memory.py --smoke

Each measurement runs in a fresh subprocess (so one does not inherit the other's peak) that maps the
.npy files, trains the dense AE for one epoch over them and reports the peak resident set (VmHWM). For comparison the
in-memory path (`to_device`, the whole set as one tensor) is measured the same way on Fashion-MNIST.
The synthetic set repeats Fashion-MNIST's images 20 times (1.2M images, 0.94 GB as uint8).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import command, fashion, machine, table, write_section  # noqa: E402

from aelab.data.stream import save_npy  # noqa: E402

CHILD = r"""
import json, sys, time, torch
def hwm_mb():  # VmHWM resets at exec; ru_maxrss keeps the forking parent's peak (Linux), so it misleads
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
from aelab.config import TrainConfig
from aelab.engine import evaluate, fit
from aelab.models import build_model
folder, mode, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = hwm_mb()
if mode == "stream":
    from aelab.data.stream import open_npy
    splits = open_npy(folder, "cpu", chunk)
    train, test = splits.train, splits.test
else:
    import numpy as np
    from aelab.data.device import DeviceData
    load = lambda name: torch.tensor(np.load(f"{folder}/{name}.npy"))
    train, test = DeviceData(load("x_train"), load("y_train")), DeviceData(load("x_test"), load("y_test"))
torch.manual_seed(0)
model = build_model("dense", (1, 28, 28))
t0 = time.perf_counter()
fit(model, train, TrainConfig(epochs=1, batch_size=512, progress="off"))
seconds = time.perf_counter() - t0
print(json.dumps({"peak_mb": hwm_mb(), "after_import_mb": base, "rows": len(train), "seconds": seconds,
                  "test_mse": evaluate(model, test)["mse"]}))
"""


def measure(folder: Path, mode: str, chunk: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), mode, str(chunk)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_sets(ds, tmp: Path) -> tuple[Path, Path]:
    """Fashion-MNIST as .npy files, and a copy 20x larger written without holding it in memory."""
    small, big = save_npy(ds, tmp / "fmnist"), tmp / "x20"
    big.mkdir()
    for name in ("x_test", "y_test"):
        np.save(big / f"{name}.npy", getattr(ds, name))
    np.save(big / "y_train.npy", np.tile(ds.y_train, 20))
    mm = np.lib.format.open_memmap(big / "x_train.npy", "w+", np.uint8, (20 * len(ds.x_train), *ds.shape))
    for i in range(20):  # piece by piece: this process never holds the big set either
        mm[i * len(ds.x_train):(i + 1) * len(ds.x_train)] = ds.x_train
    mm.flush()
    return small, big


def growth_note(rows: list, chunk: int, pixels: int, smoke: bool) -> str:
    """How much the peak grows per extra image from 1x to 20x, beyond the chunk's own growth."""
    (_, n1, _, _, _, peak1, *_), (_, n20, _, _, _, peak20, *_) = rows[1], rows[-1]
    chunk_growth = (min(n20, chunk) - min(n1, chunk)) * pixels  # a bigger set fills a bigger chunk
    per_row = ((peak20 - peak1) * 2**20 - chunk_growth) / (n20 - n1)
    verdict = "bounded" if per_row < 64 else "NOT bounded: images are held"
    if smoke:  # 38k extra rows: allocator noise of a few MB outweighs them
        verdict = "too few rows to judge (smoke)"
    return (f"Peak growth from 1x to 20x: {peak20 - peak1:.0f} MB, {per_row:.0f} bytes per extra image beyond the "
            f"chunk's growth ({pixels} bytes of pixels each): {verdict}. What grows is on the host: labels and the "
            f"epoch's order (int64, 8 bytes each); images are held one chunk ({chunk * pixels / 2**20:.0f} MB) at a "
            "time. The small-chunk row shows what the two-level shuffle (chunks, then rows within) costs in test "
            "MSE against a uniform shuffle (one seed, one epoch).\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="2k images, 20x = 40k: seconds")
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    ds = fashion(n_train=2000 if args.smoke else None, n_test=200 if args.smoke else None)
    small_chunk = max(1, len(ds.x_train) // 15)  # 15 chunks: the two-level shuffle at work
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        small, big = write_sets(ds, Path(tmp))
        for label, folder, mode, chunk in [("Fashion-MNIST, in memory (to_device)", small, "memory", 0),
                                           ("Fashion-MNIST, memory-mapped", small, "stream", args.chunk),
                                           ("Fashion-MNIST, memory-mapped", small, "stream", small_chunk),
                                           ("20x Fashion-MNIST, memory-mapped", big, "stream", args.chunk)]:
            r = measure(folder, mode, chunk or args.chunk)
            size = (Path(folder) / "x_train.npy").stat().st_size / 2**20
            rows.append([label, r["rows"], chunk or "-", size, r["after_import_mb"], r["peak_mb"], r["seconds"],
                         r["test_mse"]])
            print(rows[-1], flush=True)
    md = f"## Peak memory, memory-mapped data\n\nMachine: {machine('cpu')}  \nCommand: `{command()}`  \n" \
         "Dense AE, 1 epoch, batch 512, seed 0, CPU; peak = VmHWM of a fresh process\n\n" + \
        table(["data", "training images", "chunk rows", "x_train.npy MB", "RSS after imports MB", "peak RSS MB",
               "epoch seconds", "test MSE"], rows) + "\n\n" + growth_note(rows, args.chunk, int(np.prod(ds.shape)), args.smoke)
    print(md)
    if args.write_results and not args.smoke:
        write_section("memory", md)


if __name__ == "__main__":
    main()
