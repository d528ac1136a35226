"""Step efficiency as a roofline: the FLOPs of one training step of the semi study's MLP arms and the
default conv AE, the step time, the GFLOP/s reached, and that as a fraction of this machine's fp32
matrix-multiply peak measured in the same process at the same thread count.

    python benchmarks/bench_roofline.py --threads 2 --write-results   # ~1 min on 2 quiet CPU cores
    python benchmarks/bench_roofline.py --smoke                       # seconds: checks it runs
    python benchmarks/bench_roofline.py --threads 1 --profile 20 --arms ladder-full   # where a step's time goes

Each arm trains through the engine's own step (`aelab.step.Stepper`: forward, backward, fused Adam,
every player on its schedule) at the papers' batch: 100 unlabelled + 100 labelled images for the
ladders and M2, 100 labelled for the supervised MLP (the ladder's network with noise 0.3 and its
clean statistics pass), VAT 100 + 100, the conv AE at the engine's default 128. FLOPs are counted
with torch's FlopCounterMode over one cycle of the players' schedules (the ladder's readout steps
every 10th step), forward and backward, and divided by the cycle's steps; the counter sees the
matrix products and convolutions only, so the fraction of peak says how much of the step is spent
outside them (elementwise chains, statistics, noise, the optimiser). The step time is the median
over `--repeats` timed cycles after `--warmup` steps. The peak: the median of timed n x n sgemms
(2 n^3 FLOPs each), before and after the arms; the fractions use the higher. On a shared machine
every figure moves with the load: the script prints the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import command, machine, median, table, write_section  # noqa: E402

from aelab.config import TrainConfig  # noqa: E402
from aelab.models import build_model  # noqa: E402
from aelab.models.conv import ConvConfig  # noqa: E402
from aelab.models.ladder import LadderConfig  # noqa: E402
from aelab.models.m2 import M2Config  # noqa: E402
from aelab.models.semi_common import SemiSupervised  # noqa: E402
from aelab.models.vat import VATConfig  # noqa: E402
from aelab.step import FitState, Stepper  # noqa: E402

SHAPE = (1, 28, 28)
TARGET = 0.60  # the bar: the ladder-full step at >= 60% of the GEMM peak on 2 threads


def arms(smoke: bool) -> dict[str, tuple]:
    """name -> (model config, engine batch); the semi study's settings (aelab/studies/semi.py)."""
    small = {"hidden": (64, 32), "latent_dim": 16} if smoke else {}
    return {
        "ladder-full": (LadderConfig(name="ladder", variant="full", **small), 100),
        "ladder-gamma": (LadderConfig(name="ladder", variant="gamma", **small), 100),
        "supervised MLP": (LadderConfig(name="ladder", variant="supervised", noise=0.3, **small), 100),
        "m2 (M1+M2)": (M2Config(name="m2", input="codes", **({"hidden": (32,), "m1_hidden": (32,)} if smoke else {})),
                       100),
        "vat": (VATConfig(name="vat", **({"hidden": (64, 32)} if smoke else {})), 100),
        "conv AE (default)": (ConvConfig(name="conv", **({"channels": (8, 16)} if smoke else {})), 128),
    }


def gemm_peak(n: int, repeats: int) -> float:
    """fp32 GFLOP/s of an n x n matrix product (median of `repeats` after one warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / median(times) / 1e9


def make_step(cfg, batch_size: int, smoke: bool):
    """A model in training mode with a labelled pool, its engine step, a batch, and its schedule's cycle."""
    torch.manual_seed(0)
    model = build_model(cfg, SHAPE, 10)
    pool = 100 if not smoke else 20
    if isinstance(model, SemiSupervised):
        model.set_pool(torch.randint(0, 256, (pool, *SHAPE), dtype=torch.uint8), torch.arange(pool) % 10, 60000)
    x = torch.rand(batch_size, *SHAPE)
    labelled = not isinstance(model, SemiSupervised)  # the AE ignores labels; the SSL models draw their own
    batch = {"x": x, "x_in": x, "y": torch.arange(batch_size) % 10 if labelled else torch.full((batch_size,), -1)}
    train = TrainConfig(batch_size=batch_size, lr=2e-3, amp="off", compile="off", channels_last=False)
    stepper = Stepper(model.train(), train, torch.device("cpu"))
    cycle = max(p.every for p in stepper.players)
    return stepper, batch, cycle


def measure(cfg, batch_size: int, warmup: int, repeats: int, smoke: bool) -> tuple[float, float]:
    """(GFLOP per step, median seconds per step) of one arm."""
    stepper, batch, cycle = make_step(cfg, batch_size, smoke)
    state = FitState()
    with FlopCounterMode(display=False) as counter:
        for s in range(cycle):
            stepper(batch, s, state)
    flops = counter.get_total_flops() / cycle
    for s in range(warmup):
        stepper(batch, s, state)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(cycle):
            stepper(batch, s, state)
        times.append((time.perf_counter() - t0) / cycle)
    return flops / 1e9, median(times)


MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::convolution", "aten::mkldnn_convolution",
          "aten::convolution_backward")


def profile(cfg, batch_size: int, steps: int, smoke: bool) -> dict:
    """Where one arm's step time goes, by torch.profiler over `steps` steps: the share of the matrix
    products and convolutions (self time), and how many other kernels a step runs."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    stepper, batch, cycle = make_step(cfg, batch_size, smoke)
    state = FitState()
    with FlopCounterMode(display=False) as counter:  # one cycle of the schedules: also the warm-up
        for s in range(cycle):
            stepper(batch, s, state)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for s in range(steps):
            stepper(batch, s, state)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    mat = sum(e.self_cpu_time_total for e in events if e.key in MATMUL)
    others = sum(e.count for e in events if e.key not in MATMUL) / steps
    return {"ms_per_step": total / steps / 1e3, "matmul_share": mat / total, "matmul_ms": mat / steps / 1e3,
            "matmul_gflops": counter.get_total_flops() / cycle / (mat / steps / 1e6) / 1e9,
            "other_aten_calls_per_step": others}


def verdict(rows: list[list], threads: int) -> str:
    """The issue's bar on the ladder-full row: at >= 60% of the GEMM peak on 2 threads."""
    frac = next(r[4] for r in rows if r[0] == "ladder-full")
    bar = f"target >= {TARGET:.0%} on 2 threads"
    if threads != 2:
        return f"ladder-full at {frac:.0%} of the GEMM peak on {threads} threads ({bar}: not judged here)."
    return f"ladder-full at {frac:.0%} of the GEMM peak; {bar}: " + ("met." if frac >= TARGET else "missed.")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=10, help="steps before timing")
    ap.add_argument("--repeats", type=int, default=15, help="timed cycles of the players' schedules")
    ap.add_argument("--gemm", type=int, default=2048, help="n of the n x n sgemm that measures the peak")
    ap.add_argument("--arms", default="", help="comma-separated arm names (default: all)")
    ap.add_argument("--smoke", action="store_true", help="seconds, toy sizes; figures mean nothing, nothing written")
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="instead: each arm's time split (matrix products vs the rest) over STEPS profiled steps")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.warmup, args.repeats, args.gemm = 1, 2, 128
    chosen = arms(args.smoke)
    if args.arms:
        unknown = set(args.arms.split(",")) - set(chosen)
        if unknown:
            ap.error(f"--arms: unknown {', '.join(sorted(unknown))}; choose from {', '.join(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in args.arms.split(",")}
    if args.profile:
        peak = gemm_peak(args.gemm, max(3, args.repeats // 3))
        for name, (cfg, bs) in chosen.items():
            r = profile(cfg, 16 if args.smoke else bs, args.profile, args.smoke)
            print(f"{name}: {r['ms_per_step']:.1f} ms a step under the profiler, {r['matmul_share']:.0%} of it "
                  f"({r['matmul_ms']:.1f} ms) in matrix products and convolutions, which run at "
                  f"{r['matmul_gflops']:.1f} GFLOP/s ({r['matmul_gflops'] / peak:.0%} of the {peak:.1f} GFLOP/s "
                  f"sgemm peak at {args.threads} threads); {r['other_aten_calls_per_step']:.0f} other aten calls "
                  "a step", flush=True)
        return
    load0 = os.getloadavg()
    peak = gemm_peak(args.gemm, max(3, args.repeats // 3))
    measured = []
    for name, (cfg, bs) in chosen.items():
        gflop, sec = measure(cfg, 16 if args.smoke else bs, args.warmup, args.repeats, args.smoke)
        measured.append((name, gflop, sec))
        print(f"{name}: {gflop:.3f} GFLOP, {sec * 1e3:.2f} ms, {gflop / sec:.1f} GFLOP/s", flush=True)
    peak_after = gemm_peak(args.gemm, max(3, args.repeats // 3))
    load1 = os.getloadavg()
    top = max(peak, peak_after)  # the machine's peak is the best it showed: a low reading would flatter the arms
    rows = [[name, round(g, 3), round(s * 1e3, 2), round(g / s, 1), round(g / s / top, 3)] for name, g, s in measured]
    text = table(["arm", "GFLOP / step", "ms / step (median)", "GFLOP/s", "fraction of GEMM peak"], rows)
    note = (f"fp32 GEMM peak ({args.gemm}^2 sgemm, {args.threads} threads): {peak:.1f} GFLOP/s before the arms, "
            f"{peak_after:.1f} after (the fractions use the higher). Load average (1 min) {load0[0]:.2f} before, "
            f"{load1[0]:.2f} after.")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if max(load0[0], load1[0]) > cores:
        note += f" **Taken under load** (load average above the {cores} usable cores): re-run on a quiet machine."
    if "ladder-full" in chosen:
        note += " " + verdict(rows, args.threads)
    print(text + "\n\n" + note)
    if args.write_results and not args.smoke:
        write_section(f"roofline-{args.threads}t", f"## Step efficiency (roofline), {args.threads} threads\n\n"
                      f"`{command()}`\n\n{machine('cpu')}\n\n{text}\n\n{note}")


if __name__ == "__main__":
    main()
