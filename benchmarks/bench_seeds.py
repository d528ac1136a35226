"""8 seeds of the small conv AE (model 2): one `SeedStack` (vmap over stacked weights) against one run after another.

    python benchmarks/bench_seeds.py --device cpu --quick --write-results
    python benchmarks/bench_seeds.py --device cuda --write-results
    python benchmarks/bench_seeds.py --smoke

Both arms train through `engine.fit` with the same config (aelab's defaults: on CUDA compiled and bf16),
the same seeds, data order and epochs: the stack is `aelab.batched.fit_seeds`, the other arm 8 `fit`
calls. The table gives the wall time of each (synchronized at both ends on CUDA), the speed-up, and
the mean test MSE per pixel of the 8 models from each arm (they must agree). Where the step is
compiled, each arm is warmed up once (a 2-batch fit: aelab's compile cache then holds its graph, as
in a study's later fits); the warm-up seconds are reported, not counted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import Clock, command, fashion, machine, median, table, write_section  # noqa: E402

from aelab.batched import fit_seeds  # noqa: E402
from aelab.config import TrainConfig  # noqa: E402
from aelab.data.device import to_device  # noqa: E402
from aelab.engine import evaluate, fit  # noqa: E402
from aelab.models import build_model  # noqa: E402
from aelab.models.conv import ConvConfig  # noqa: E402

ONE, STACK = "one after another", "batched (SeedStack, vmap)"
TARGET = {"cuda": 4.0}  # the issue: 8 batched seeds >= 4x one after another on a GPU


def build():
    return build_model(ConvConfig(name="conv", channels=(16, 32, 64), latent_dim=32, recon="mse"), (1, 28, 28))


def one_after_another(seeds, train, cfg):
    models = []
    for s in seeds:
        torch.manual_seed(s)
        m = build()
        fit(m, train, cfg, seed=s)
        models.append(m)
    return models


def run(arm: str, seeds, train, cfg):
    return one_after_another(seeds, train, cfg) if arm == ONE else fit_seeds(build, seeds, train, cfg)[0]


def verdict(times: dict[str, list[float]], device: str) -> str:
    ratio = median(times[ONE]) / median(times[STACK])
    target = TARGET.get(device)
    if target is None:
        return f"Batched: {ratio:.2f}x one after another (no target on {device})."
    return f"Batched: {ratio:.2f}x one after another; target >= {target:g}x: " + \
        ("met." if ratio >= target else f"missed by {target / ratio:.2f}x.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    n = 256 if args.smoke else 5000 if args.quick else 60000
    repeats = args.repeats or (1 if args.smoke else 3)
    ds = fashion(n_train=2048 if args.smoke else None, n_test=500 if args.smoke else None, smoke=args.smoke)
    splits = to_device(ds, args.device)
    train = splits.train.subset(torch.arange(n, device=splits.train.x.device))
    cfg = TrainConfig(epochs=1, batch_size=128, progress="off")
    seeds = list(range(args.seeds))
    warm = {}
    if args.device == "cuda":  # compile=auto compiles on CUDA only
        small = train.subset(torch.arange(256, device=train.x.device))
        for arm in (ONE, STACK):
            with Clock(args.device) as c:
                run(arm, seeds[:1] if arm == ONE else seeds, small, cfg)
            warm[arm] = c.seconds
    times, mses = {ONE: [], STACK: []}, {ONE: [], STACK: []}
    for _ in range(repeats):
        for arm in (ONE, STACK):
            with Clock(args.device) as c:
                models = run(arm, seeds, train, cfg)
            times[arm].append(c.seconds)
            mses[arm].append(sum(evaluate(m, splits.test)["mse"] for m in models) / len(models))
        print({k: v[-1] for k, v in times.items()}, flush=True)
    base = median(times[ONE])
    rows = [[k, median(v), base / median(v), median(mses[k])] for k, v in times.items()]
    warmed = "" if not warm else "\n\nNot timed: the compile warm-up (a 2-batch fit per arm): " + \
        ", ".join(f"{k} {v:.1f} s" for k, v in warm.items()) + "."
    md = f"## {args.seeds} seeds at once, {args.device}\n\nMachine: {machine(args.device)}  \nCommand: `{command()}`  \n" \
         f"Small conv AE (model 2), {n} images x 1 epoch, batch 128, {repeats} repeats, aelab's defaults " \
         f"(compile {cfg.compile}, amp {cfg.amp})\n\n" + \
        table(["arm", "median seconds", "speed-up (x)", "mean test MSE/pixel of the seeds"], rows) + \
        f"\n\n{verdict(times, args.device)}{warmed}"
    print(md)
    if args.write_results and not args.smoke:
        write_section(f"seeds-{args.device}", md)


if __name__ == "__main__":
    main()
