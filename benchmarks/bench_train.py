"""aelab against pythae and a plain PyTorch loop: the same networks, data, batch, optimiser, epochs, seed.

    python benchmarks/bench_train.py --device cpu --quick --write-results   # < 10 min on 2 CPU cores
    python benchmarks/bench_train.py --device cuda --write-results           # ~3 min on one H100/H200
    python benchmarks/bench_train.py --smoke                                # seconds: checks it runs

Systems alternate (aelab, pythae, plain, aelab, ...) for `--repeats` rounds, so a slow patch of a
shared machine hits all three; models 1 and 2 also time a bare hand loop over device-side data, as a
reference for what the arithmetic alone costs (no system can do the same work faster without
changing the arithmetic). aelab runs with its defaults (`train.compile` and `train.amp` auto: on
CUDA compiled and bf16; on a CPU eager, and bf16 only with AMX units), plus, on the CPU, measured
arms for what the defaults leave off there: `aelab compile` (models 1-2; `--compile-arm` for 3) and
`aelab bf16` (where bf16 units are detected, or `--amp-arm`). A compiled arm is warmed up once per
architecture before timing (aelab's compile cache keeps the graph for every later fit in the
process, as in a study); the warm-up seconds are reported, not counted. CUDA work is timed with a
synchronize at both ends. The tables give the median training samples/s, the ratios to aelab and
the test MSE per pixel each reached (the same work must give the same quality). Model 4 trains
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
from common import command, fashion, have_pythae, machine, median, table, test_mse, write_section  # noqa: E402
import systems  # noqa: E402

from aelab import compile_cache  # noqa: E402
from aelab.amp import cpu_bf16_units  # noqa: E402
from aelab.config import TrainConfig  # noqa: E402
from aelab.data.device import to_device  # noqa: E402
from aelab.engine import evaluate, fit  # noqa: E402
from aelab.models import build_model  # noqa: E402

# (train images, epochs) per model for each mode; "gpu" (cuda without --quick) fits ~3 min on an H100
SIZES = {"smoke": {1: (512, 1), 2: (256, 1), 3: (128, 1)},
         "quick": {1: (60000, 1), 2: (20000, 1), 3: (1024, 1)},
         "gpu": {1: (60000, 1), 2: (60000, 1), 3: (20000, 1)},
         "full": {1: (60000, 3), 2: (60000, 3), 3: (60000, 1)}}
# the targets: aelab's speed-up over pythae, at the same test MSE (within SAME_MSE)
TARGETS = {"cpu": {1: 1.8, 2: 2.0, 3: 1.8, 4: 30.0}, "cuda": {1: 10.0, 2: 10.0}}
SAME_MSE = 0.05  # relative: a faster run that reaches a worse test MSE is not the same work
EPOCH_60K = 0.5  # GPU target: one 60k-image epoch of model 2, seconds


def arms(key: int, args) -> dict:
    """The systems timed for model `key` on this device (see the module docstring)."""
    out = {"aelab": systems.aelab_arm()}
    if args.device == "cpu" and (key in (1, 2) or args.compile_arm):
        out["aelab compile"] = systems.aelab_arm(compile="on")
    if args.device == "cpu" and (cpu_bf16_units() or args.amp_arm):
        out["aelab bf16"] = systems.aelab_arm(amp="bf16")
    peers = dict(systems.SYSTEMS) if have_pythae() else {k: v for k, v in systems.SYSTEMS.items() if k != "pythae"}
    out.update({k: v for k, v in peers.items() if k != "aelab"})
    if key in (1, 2):
        out[systems.BARE] = systems.train_bare
    return out


def compare(key: int, ds, n: int, epochs: int, args) -> str:
    spec = systems.SPECS[key]
    x = ds.x_train[:n]
    train = to_device(ds, args.device).train.subset(torch.arange(n))
    trainers = arms(key, args)
    warm = {name: systems.warm_up(spec, train, args.batch, args.device, **t.options) for name, t in trainers.items()
            if hasattr(t, "options") and systems.compiles(t.options, args.device)}
    speed, quality = {s: [] for s in trainers}, {s: [] for s in trainers}
    for r in range(args.repeats):
        nets = systems.fresh_nets(spec, seed=r)
        for name, trainer in trainers.items():
            data = train if name.startswith("aelab") or name == systems.BARE else x
            seconds, samples, recon = trainer(systems.copy_nets(nets), spec, data, epochs, args.batch, r, args.device)
            speed[name].append(samples / seconds)
            quality[name].append(test_mse(recon, ds.x_test, args.device))
            print(f"  model {key} repeat {r} {name:14s} {samples / seconds:10.0f} samples/s  "
                  f"test MSE {quality[name][-1]:.5f}", flush=True)
    base = median(speed["aelab"])
    rows = [[name, median(v), base / median(v), median(quality[name])] for name, v in speed.items()]
    params = sum(p.numel() for net in systems.fresh_nets(spec, 0) for p in net.parameters())
    head = f"### Model {key}: {spec.name} ({params / 1e6:.3g}M parameters), {n} images x {epochs} epoch(s), " \
           f"batch {args.batch}, {args.repeats} repeats\n\n"
    notes = [floor_note(speed, TARGETS.get(args.device, {}).get(key, 3.0)), target_note(key, speed, quality, args.device), warm_note(warm)]
    if key == 2 and args.device == "cuda":
        notes.append(epoch_note(speed["aelab"]))
    return head + table(["system", "median samples/s", "aelab speed-up (x)", "median test MSE/pixel"], rows) + \
        "".join(f"\n\n{n}" for n in notes if n)


def floor_note(speed: dict[str, list[float]], target: float = 3.0) -> str:
    """How far `target` x pythae is from what the bare loop (the arithmetic alone) reaches."""
    if systems.BARE not in speed or "pythae" not in speed:
        return ""
    need, bare, aelab = target * median(speed["pythae"]), median(speed[systems.BARE]), median(speed["aelab"])
    return f"aelab runs at {aelab / bare:.2f}x the bare loop; {target:g}x pythae would need {need:.4g} samples/s, " \
           f"{need / bare:.2f}x what the bare loop reaches on this machine."


def target_note(key: int, speed: dict, quality: dict, device: str) -> str:
    """The issue's target for this model on this device: met or missed, by how much, for each aelab arm."""
    target = TARGETS.get(device, {}).get(key)
    if target is None or "pythae" not in speed:
        return ""
    p_speed, p_mse = median(speed["pythae"]), median(quality["pythae"])
    parts = []
    for arm in (a for a in speed if a.startswith("aelab")):
        ratio, mse = median(speed[arm]) / p_speed, median(quality[arm])
        same = mse <= p_mse * (1 + SAME_MSE)
        verdict = "met" if ratio >= target and same else "missed"
        why = "" if same else f", test MSE {mse:.4g} vs pythae's {p_mse:.4g}: not the same quality"
        parts.append(f"{arm} {ratio:.2f}x ({verdict}{why})")
    return f"Target: aelab >= {target:g}x pythae at the same test MSE (within {SAME_MSE:.0%}): " + "; ".join(parts) + "."


def warm_note(warm: dict[str, float]) -> str:
    if not warm:
        return ""
    shown = ", ".join(f"{k} {v:.1f} s" for k, v in warm.items())
    return f"Not timed: the compile warm-up (a 2-batch fit per compiled arm, once per architecture): {shown}."


def epoch_note(aelab_speed: list[float]) -> str:
    seconds = 60000 / median(aelab_speed)
    verdict = "met" if seconds < EPOCH_60K else f"missed by {seconds / EPOCH_60K:.2f}x"
    return f"One 60k-image epoch of model 2: {seconds:.3g} s (target < {EPOCH_60K} s: {verdict})."


class Reached(Exception):
    pass


def aelab_race(ds, train, test, args, **options) -> tuple[float, float]:
    """aelab's default conv VAE trained until the test MSE reaches the target: (seconds, last MSE)."""
    cfg = TrainConfig(epochs=args.max_epochs, progress="off", **options)
    if systems.compiles(options, args.device):  # compile outside the clock, as a study's later fits reuse it
        torch.manual_seed(0)
        small = train.subset(torch.arange(2 * cfg.batch_size, device=train.x.device))
        fit(build_model("vae", ds.shape), small, TrainConfig(**{**cfg.__dict__, "epochs": 1}), seed=0)
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
        fit(model, train, cfg, seed=0, on_epoch=check)
    except Reached:
        pass
    return time.perf_counter() - t0 - eval_s[0], last[0]


def pythae_race(ds, args, n: int, cap: float) -> tuple[float, float]:
    torch.manual_seed(0)
    spec = systems.SPECS[3]
    pmodel = systems.pythae_model(systems.fresh_nets(spec, 0), spec, recon_loss="bce")
    plast = [float("nan")]

    def pcheck(seconds):
        plast[0] = test_mse(systems.pythae_recon(pmodel), ds.x_test, args.device)
        pmodel.train()
        if plast[0] <= args.target or seconds > cap:
            raise Reached

    timer = systems.pythae_callback(args.device, pcheck)
    try:
        systems.run_pythae(pmodel, ds.x_train[:n], args.max_epochs, args.batch, 0, args.device, timer)
    except Reached:
        pass
    return timer.seconds, plast[0]


def to_quality(ds, args, n: int) -> str:
    """Model 4: wall time until the test MSE per pixel <= target (evaluation time excluded)."""
    train = to_device(ds, args.device).train.subset(torch.arange(n))
    test = to_device(ds, args.device).test
    result = {"aelab (default conv VAE)": aelab_race(ds, train, test, args)}
    if args.device == "cpu" and (cpu_bf16_units() or args.amp_arm):
        result["aelab bf16 (default conv VAE)"] = aelab_race(ds, train, test, args, amp="bf16")
    target = TARGETS.get(args.device, {}).get(4)
    cap = pythae_cap(result, args.target, args.cap, args.cap_max, target)
    if have_pythae():
        result["pythae VAE (benchmark nets)"] = pythae_race(ds, args, n, cap)
    rows = [[k, s, m, "yes" if m <= args.target else "no (cap or epochs)"] for k, (s, m) in result.items()]
    head = f"### Model 4: time to test MSE/pixel <= {args.target} ({n} training images, cap {args.cap:g} s for " \
           f"aelab, {cap:.0f} s for pythae, checked after each epoch)\n\n"
    return head + table(["system", "training seconds", "test MSE/pixel", "reached"], rows) + \
        "\n\n" + race_verdict(result, args.target, target)


def pythae_cap(aelab: dict[str, tuple[float, float]], target_mse: float, cap: float, cap_max: float,
               target: float | None) -> float:
    """pythae's time cap: long enough that stopping at it still shows `target` x (target x aelab's best
    time to quality, if that is longer than `cap`), but never beyond `cap_max`."""
    reached = [s for s, m in aelab.values() if m <= target_mse]
    if not target or not reached:
        return cap
    return min(max(cap, target * min(reached) * 1.02), max(cap, cap_max))


def race_verdict(result: dict[str, tuple[float, float]], target_mse: float, target: float | None) -> str:
    """Each aelab arm's ratio to pythae (a lower bound where pythae stopped at the cap), against the target."""
    peer = result.get("pythae VAE (benchmark nets)")
    if peer is None:
        return "pythae not installed: no ratio"
    (p_s, p_m), lines = peer, []
    for arm, (a_s, a_m) in ((k, v) for k, v in result.items() if k.startswith("aelab")):
        if a_m > target_mse:
            lines.append(f"{arm} did not reach the target within the cap: no ratio (raise --cap or --max-epochs)")
            continue
        ratio = p_s / a_s
        how = f"reached the target {ratio:.3g}x faster than pythae" if p_m <= target_mse else \
            f"only aelab reached the target: at least {ratio:.3g}x faster (pythae stopped at the cap)"
        if target:
            how += f"; target >= {target:g}x: " + ("met" if ratio >= target else
                                                   f"{'missed' if p_m <= target_mse else 'not shown'} "
                                                   f"({ratio:.3g}x{'' if p_m <= target_mse else ' is a lower bound'})")
        lines.append(f"{arm}: {how}")
    return "  \n".join(lines)


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
    ap.add_argument("--cap-max", type=float, default=None,
                    help="model 4: pythae's cap may grow to the target ratio x aelab's time, up to this")
    ap.add_argument("--max-epochs", type=int, default=20)
    ap.add_argument("--compile-arm", action="store_true", help="CPU: also time `aelab compile` on model 3")
    ap.add_argument("--amp-arm", action="store_true", help="CPU: time `aelab bf16` even without bf16 units")
    ap.add_argument("--write-results", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    ap.add_argument("--section", default=None, help="RESULTS.md section (default train-DEVICE)")
    args = ap.parse_args()
    if args.smoke:
        compile_cache.BACKEND = "aot_eager"  # smoke checks that it runs; inductor's compile takes minutes on a CPU
    kind = "smoke" if args.smoke else "quick" if args.quick else "gpu" if args.device == "cuda" else "full"
    args.repeats = args.repeats or (1 if args.smoke else 3)
    # quick: pythae's 17.2M VAE takes ~70 s an epoch of 5k images on 2 cores, and the cap is checked
    # after each epoch, so 5k images and 100 s keep model 4 at ~2.5 minutes
    args.cap = args.cap or {"smoke": 5.0, "quick": 100.0, "gpu": 60.0, "full": 1800.0}[kind]
    # quick: room for pythae to run 30x aelab's ~8 s (the race's target) within the 10-minute budget
    args.cap_max = args.cap_max or {"smoke": 5.0, "quick": 260.0, "gpu": 60.0, "full": 1800.0}[kind]
    n4 = {"smoke": 256, "quick": 5000, "gpu": 60000, "full": 60000}[kind]
    ds = systems_data(kind)
    t0 = time.perf_counter()
    parts = [f"Machine: {machine(args.device)}  \nCommand: `{command()}`  \nMode: {kind}, device {args.device}, "
             f"{len(ds.x_test)} test images"]
    keys = [int(k) for k in args.models.split(",")]
    for i, key in enumerate(keys):
        if key == 3 and not have_pythae():
            parts.append("### Model 3: skipped (its networks are pythae's; pythae is not installed)")
        elif key == 4:
            parts.append(to_quality(ds, args, n4))
        else:
            parts.append(compare(key, ds, *SIZES[kind][key], args))
        print(parts[-1] + "\n", flush=True)
        if args.write_results and kind != "smoke":  # after each model: a time cap still leaves the finished ones
            rest = keys[i + 1:]
            tail = f"\n\n(models {rest} still running when this was written)" if rest else \
                f"\n\nThe benchmark took {(time.perf_counter() - t0) / 60:.1f} min."
            md = "\n\n".join(parts) + tail
            title = f"Training speed, {args.device}" + (f" ({args.section})" if args.section else "")
            write_section(args.section or f"train-{args.device}", f"## {title}\n\n{md}")


def systems_data(kind: str):
    # every run's test MSE is measured; on 2 CPU cores 10k test images through the 17M-parameter VAE
    # took minutes of the quick mode's budget, so quick and smoke score on the first 2k / 1k
    n_test = {"smoke": 1000, "quick": 2000}.get(kind)
    return fashion(n_train={"smoke": 2048}.get(kind), n_test=n_test, smoke=kind == "smoke")


if __name__ == "__main__":
    main()
