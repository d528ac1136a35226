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

CHILD = r"""
import json, sys, time, torch
def hwm_mb():  # VmHWM resets at exec; ru_maxrss keeps the forking parent's peak (Linux), so it misleads
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
from aelab.config import TrainConfig
from aelab.engine import fit
from aelab.models import build_model
folder, mode, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = hwm_mb()
if mode == "stream":
    from aelab.data.stream import open_npy
    train = open_npy(folder, "cpu", chunk).train
else:
    import numpy as np
    from aelab.data.device import DeviceData
    train = DeviceData(torch.tensor(np.load(folder + "/x_train.npy")), torch.tensor(np.load(folder + "/y_train.npy")))
torch.manual_seed(0)
t0 = time.perf_counter()
fit(build_model("dense", (1, 28, 28)), train, TrainConfig(epochs=1, batch_size=512, progress="off"))
print(json.dumps({"peak_mb": hwm_mb(), "after_import_mb": base,
                  "rows": len(train), "seconds": time.perf_counter() - t0}))
"""


def measure(folder: Path, mode: str, chunk: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), mode, str(chunk)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="2k images, 20x = 40k: seconds")
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    from aelab.data.stream import save_npy

    ds = fashion(n_train=2000 if args.smoke else None, n_test=200 if args.smoke else None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        small = save_npy(ds, Path(tmp) / "fmnist")
        big = Path(tmp) / "x20"
        big.mkdir()
        for name in ("x_test", "y_test"):
            np.save(big / f"{name}.npy", getattr(ds, name))
        np.save(big / "y_train.npy", np.tile(ds.y_train, 20))
        mm = np.lib.format.open_memmap(big / "x_train.npy", "w+", np.uint8, (20 * len(ds.x_train), *ds.shape))
        for i in range(20):  # written piece by piece: this process never holds the big set either
            mm[i * len(ds.x_train):(i + 1) * len(ds.x_train)] = ds.x_train
        mm.flush()
        del mm
        for label, folder, mode in [("Fashion-MNIST, in memory (to_device)", small, "memory"),
                                    ("Fashion-MNIST, memory-mapped + chunks", small, "stream"),
                                    ("20x Fashion-MNIST, memory-mapped + chunks", big, "stream")]:
            r = measure(folder, mode, args.chunk)
            size = (Path(folder) / "x_train.npy").stat().st_size / 2**20
            rows.append([label, r["rows"], size, r["after_import_mb"], r["peak_mb"], r["seconds"]])
            print(rows[-1], flush=True)
    md = f"## Peak memory, memory-mapped data\n\nMachine: {machine('cpu')}  \nCommand: `{command()}`  \n" \
         f"Dense AE, 1 epoch, batch 512, chunks of {args.chunk} images, CPU; peak = VmHWM of a fresh process\n\n" + \
        table(["data", "training images", "x_train.npy MB", "RSS after imports MB", "peak RSS MB", "epoch seconds"], rows)
    print(md)
    if args.write_results and not args.smoke:
        write_section("memory", md)


if __name__ == "__main__":
    main()
