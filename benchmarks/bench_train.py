"""aelab against pythae and a plain PyTorch loop: the same networks, data, batch, optimiser, epochs, seed.

    python benchmarks/bench_train.py --device cpu --quick --write-results   # < 10 min on 2 CPU cores
    python benchmarks/bench_train.py --device cuda --write-results           # full epochs on a GPU
    python benchmarks/bench_train.py --smoke                                # seconds: checks it runs

Systems alternate (aelab, pythae, plain, aelab, ...) for `--repeats` rounds, so a slow patch of a
shared machine hits all three; models 1 and 2 also time a bare hand loop over device-side data, as a
reference for what the arithmetic alone costs (no system can do the same work faster without
changing the arithmetic). The tables give the median training samples/s, the ratios to aelab
and the test MSE per pixel each reached (the same work must give the same quality). Model 4 trains
aelab's default conv VAE and pythae's VAE with its benchmark networks until the test MSE per pixel
reaches --target (or --cap seconds), evaluation time excluded. Needs `pip install -e .[bench]`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import command, fashion, machine, median, table, test_mse, write_section  # noqa: E402
import systems  # noqa: E402

from aelab.config import TrainConfig  # noqa: E402
from aelab.data.device import to_device  # noqa: E402
from aelab.engine import evaluate, fit  # noqa: E402
from aelab.models import build_model  # noqa: E402

# (train images, epochs) per model for each mode; the full run uses all 60k images
SIZES = {"smoke": {1: (512, 1), 2: (512, 1), 3: (128, 1)},
         "quick": {1: (60000, 1), 2: (20000, 1), 3: (1024, 1)},
         "full": {1: (60000, 3), 2: (60000, 3), 3: (60000, 1)}}


def compare(key: int, ds, n: int, epochs: int, args) -> str:
    spec = systems.SPECS[key]
    x = ds.x_train[:n]
    train = to_device(ds, args.device).train.subset(torch.arange(n))
    trainers = dict(systems.SYSTEMS, **({systems.BARE: systems.train_bare} if key in (1, 2) else {}))
    speed, quality = {s: [] for s in trainers}, {s: [] for s in trainers}
    for r in range(args.repeats):
        nets = systems.fresh_nets(spec, seed=r)
        for name, trainer in trainers.items():
            data = train if name in systems.DEVICE_SIDE else x
            seconds, samples, recon = trainer(systems.copy_nets(nets), spec, data, epochs, args.batch, r, args.device)
            speed[name].append(samples / seconds)
            quality[name].append(test_mse(recon, ds.x_test, args.device))
            print(f"  model {key} repeat {r} {name:10s} {samples / seconds:10.0f} samples/s  "
                  f"test MSE {quality[name][-1]:.5f}", flush=True)
    base = median(speed["aelab"])
    rows = [[name, median(v), base / median(v), median(quality[name])] for name, v in speed.items()]
    params = sum(p.numel() for net in systems.fresh_nets(spec, 0) for p in net.parameters())
    head = f"### Model {key}: {spec.name} ({params / 1e6:.3g}M parameters), {n} images x {epochs} epoch(s), " \
           f"batch {args.batch}, {args.repeats} repeats\n\n"
    return head + table(["system", "median samples/s", "aelab speed-up (x)", "median test MSE/pixel"], rows) + \
        floor_note(speed)


def floor_note(speed: dict[str, list[float]]) -> str:
    """How far 3x pythae is from what the bare loop (the arithmetic alone) reaches."""
    if systems.BARE not in speed:
        return ""
    need, bare, aelab = 3 * median(speed["pythae"]), median(speed[systems.BARE]), median(speed["aelab"])
    return f"\n\naelab runs at {aelab / bare:.2f}x the bare loop; 3x pythae would need {need:.4g} samples/s, " \
           f"{need / bare:.2f}x what the bare loop reaches on this machine."


class Reached(Exception):
    pass


def to_quality(ds, args, n: int) -> str:
    """Model 4: wall time until the test MSE per pixel <= target (evaluation time excluded)."""
    train = to_device(ds, args.device).train.subset(torch.arange(n))
    test = to_device(ds, args.device).test
    result = {}
    torch.manual_seed(0)
    model = build_model("vae", ds.shape)
    t0, eval_s, last = time.perf_counter(), [0.0], [float("nan")]

    def check(row):
        e0 = time.perf_counter()
        last[0] = evaluate(model, test)["mse"]
        eval_s[0] += time.perf_counter() - e0
        if last[0] <= args.target or time.perf_counter() - t0 - eval_s[0] > args.cap:
            raise Reached

    try:
        fit(model, train, TrainConfig(epochs=args.max_epochs, progress="off"), seed=0, on_epoch=check)
    except Reached:
        pass
    result["aelab (default conv VAE)"] = (time.perf_counter() - t0 - eval_s[0], last[0])
    torch.manual_seed(0)
    spec = systems.SPECS[3]
    pmodel = systems.pythae_model(systems.fresh_nets(spec, 0), spec, recon_loss="bce")
    plast = [float("nan")]

    def pcheck(seconds):
        plast[0] = test_mse(systems.pythae_recon(pmodel), ds.x_test, args.device)
        pmodel.train()
        if plast[0] <= args.target or seconds > args.cap:
            raise Reached

    timer = systems.pythae_callback(args.device, pcheck)
    try:
        systems.run_pythae(pmodel, ds.x_train[:n], args.max_epochs, args.batch, 0, args.device, timer)
    except Reached:
        pass
    result["pythae VAE (benchmark nets)"] = (timer.seconds, plast[0])
    rows = [[k, s, m, "yes" if m <= args.target else "no (cap or epochs)"] for k, (s, m) in result.items()]
    (a_s, a_m), (p_s, p_m) = result.values()
    if a_m <= args.target and p_m <= args.target:
        verdict = f"aelab reached the target {p_s / a_s:.3g}x faster than pythae"
    elif a_m <= args.target:
        verdict = f"only aelab reached the target: at least {p_s / a_s:.3g}x faster (pythae stopped at the cap)"
    else:
        verdict = "aelab did not reach the target within the cap: no ratio (raise --cap or --max-epochs)"
    return f"### Model 4: time to test MSE/pixel <= {args.target} ({n} training images, cap {args.cap:g} s)\n\n" + \
        table(["system", "training seconds", "test MSE/pixel", "reached"], rows) + f"\n\n{verdict}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="subsets sized for < 10 min on 2 CPU cores")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repeat: checks that everything runs")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--models", default="1,2,3,4")
    ap.add_argument("--target", type=float, default=0.025)
    ap.add_argument("--cap", type=float, default=None, help="model 4 time cap per system, seconds")
    ap.add_argument("--max-epochs", type=int, default=20)
    ap.add_argument("--write-results", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    args = ap.parse_args()
    kind = "smoke" if args.smoke else "quick" if args.quick else "full"
    args.repeats = args.repeats or (1 if args.smoke else 3)
    # quick: pythae's 17.2M VAE takes ~70 s an epoch of 5k images on 2 cores, and the cap is checked
    # after each epoch, so 5k images and 100 s keep model 4 at ~2.5 minutes
    args.cap = args.cap or {"smoke": 5.0, "quick": 100.0, "full": 1800.0}[kind]
    n4 = {"smoke": 256, "quick": 5000, "full": 60000}[kind]
    ds = systems_data(kind)
    parts = [f"Machine: {machine(args.device)}  \nCommand: `{command()}`  \nMode: {kind}, device {args.device}, "
             f"{len(ds.x_test)} test images"]
    for key in (int(k) for k in args.models.split(",")):
        if key == 4:
            parts.append(to_quality(ds, args, n4))
        else:
            parts.append(compare(key, ds, *SIZES[kind][key], args))
        print(parts[-1] + "\n", flush=True)
    md = "\n\n".join(parts)
    if args.write_results and kind != "smoke":
        write_section(f"train-{args.device}", f"## Training speed, {args.device}\n\n{md}")


def systems_data(kind: str):
    # every run's test MSE is measured; on 2 CPU cores 10k test images through the 17M-parameter VAE
    # took minutes of the quick mode's budget, so quick and smoke score on the first 2k / 1k
    return fashion(n_test={"smoke": 1000, "quick": 2000}.get(kind))


if __name__ == "__main__":
    main()
