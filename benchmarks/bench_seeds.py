"""8 seeds of the small conv AE (model 2): one batched model (vmap) against one run after another.

    python benchmarks/bench_seeds.py --device cpu --quick --write-results
    python benchmarks/bench_seeds.py --device cuda --write-results
    python benchmarks/bench_seeds.py --smoke

Both arms do the same work (same seeds, data order, epochs); the table gives the wall time of each,
the speed-up, and the mean test MSE per pixel of the 8 models from each arm (they must agree).
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


def build():
    return build_model(ConvConfig(name="conv", channels=(16, 32, 64), latent_dim=32, recon="mse"), (1, 28, 28))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    n = 512 if args.smoke else 5000 if args.quick else 60000
    repeats = args.repeats or (1 if args.smoke else 3)
    ds = fashion(n_test=1000 if args.smoke else None)
    splits = to_device(ds, args.device)
    train = splits.train.subset(torch.arange(n))
    # channels_last off in both arms: the batched arm stacks weights in 5-D, where it does not apply
    cfg = TrainConfig(epochs=1, batch_size=128, progress="off", channels_last=False)
    seeds = list(range(args.seeds))
    times, mses = {"one after another": [], "batched (vmap)": []}, {"one after another": [], "batched (vmap)": []}
    for _ in range(repeats):
        with Clock(args.device) as c:
            models = []
            for s in seeds:
                torch.manual_seed(s)
                m = build()
                fit(m, train, cfg, seed=s)
                models.append(m)
        times["one after another"].append(c.seconds)
        mses["one after another"].append(sum(evaluate(m, splits.test)["mse"] for m in models) / len(models))
        with Clock(args.device) as c:
            models, _ = fit_seeds(build, seeds, train, cfg)
        times["batched (vmap)"].append(c.seconds)
        mses["batched (vmap)"].append(sum(evaluate(m, splits.test)["mse"] for m in models) / len(models))
        print({k: v[-1] for k, v in times.items()}, flush=True)
    base = median(times["one after another"])
    rows = [[k, median(v), base / median(v), median(mses[k])] for k, v in times.items()]
    md = f"## {args.seeds} seeds at once, {args.device}\n\nMachine: {machine(args.device)}  \nCommand: `{command()}`  \n" \
         f"Small conv AE (model 2), {n} images x 1 epoch, batch 128, {repeats} repeats\n\n" + \
        table(["arm", "median seconds", "speed-up (x)", "mean test MSE/pixel of the seeds"], rows)
    print(md)
    if args.write_results and not args.smoke:
        write_section(f"seeds-{args.device}", md)


if __name__ == "__main__":
    main()
