"""The semi study's summary (statistics, verdicts, the bars), its figures and its quick preset.

Everything here reads the stored cells (`Results`) only: test accuracy per arm and label count (mean
and 95% interval over seeds), each arm's paired difference to the supervised baseline with its
computed verdict, the baseline's chosen learning rate, and the bars: the best autoencoder-family arm
at the fewest labels, chosen by validation accuracy, against the target and against the baseline.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import stats
from ..convergence import count_statuses, qualify
from ..report import plots
from .base import Cell, Results


REFERENCE = ("vat",)  # arms outside the autoencoder family: reported in their own league, never the bar's best


def tune_cells(cfg, n: int) -> list[Cell]:
    """The supervised baseline's tuning cells at label count `n`: every setting, at the first seed."""
    return [Cell(f"tune:supervised:{arch}:noise={noise:g}:lr={lr:g}", cfg.seed, n)
            for arch in cfg.tune_arch for noise in cfg.tune_noise for lr in cfg.tune_lr]


def vat_cells(cfg, n: int) -> list[Cell]:
    """VAT's tuning cells at label count `n` (none when VAT is not an arm): every eps, at the first seed."""
    return [Cell(f"tune:vat:eps={eps:g}", cfg.seed, n) for eps in cfg.tune_eps] if "vat" in cfg.arms else []


def tuned(arm: str):
    """A tuning cell's setting, from its arm name: the baseline's (network, noise, learning rate); VAT's eps."""
    parts = arm.split(":")
    if parts[1] == "vat":
        return float(parts[2].split("=")[1])
    _, _, arch, noise, lr = parts
    return arch, float(noise.split("=")[1]), float(lr.split("=")[1])


def quick_preset(cfg):
    """Seconds on 8x8 digits (the test suite runs it): two seeds, the first label count, 4.5% of every
    arm's steps (73 to 194 steps), narrow networks, two VAT eps; every arm and kind of cell still runs."""
    r = dataclasses.replace
    small = {"hidden": (64, 32), "latent_dim": 32}
    return r(cfg, seeds=min(cfg.seeds, 2), labels=cfg.labels[:1], tune_lr=cfg.tune_lr[:2], tune_arch=cfg.tune_arch[:1],
             tune_noise=cfg.tune_noise[-1:], tune_eps=cfg.tune_eps[:2],
             budget=cfg.budget * 0.045,
             supervised=r(cfg.supervised, **small), gamma=r(cfg.gamma, **small), ladder=r(cfg.ladder, **small),
             m1=r(cfg.m1, hidden=(64,), latent_dim=8), m2=r(cfg.m2, hidden=(64,), latent_dim=8),
             aae=r(cfg.aae, hidden=(64,), disc_hidden=(32,)), sen=r(cfg.sen, channels=(8, 16, 32), hidden=32),
             ae=r(cfg.ae, channels=(8, 16), latent_dim=16), vat=r(cfg.vat, hidden=(64,), latent_dim=32))


@torch.no_grad()
def figure_arrays(arm: str, model: nn.Module, test, seed: int) -> dict:
    """Arrays the figures need, from the first seed at the fewest labels: the style/class grid of M2 and
    the AAE (one row per class, ten styles held fixed along each column) and the full ladder's
    denoising of its input layer (clean, noised, denoised test images)."""
    model.eval()
    if arm in ("m2", "aae"):
        k = model.num_classes
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(10, model.cfg.latent_dim, generator=g).to(test.device).repeat(k, 1)  # (K*10, d)
        y = torch.arange(k, device=test.device).repeat_interleave(10)
        return {"style_grid": torch.sigmoid(model.generate(z, y)).float().cpu()}
    if arm == "ladder-full":
        x = test.batch(slice(0, 10))["x"]
        torch.manual_seed(seed)
        noised, denoised = model.denoised_input(x)
        return {"ladder_layers": torch.cat([x, noised.clamp(0, 1), denoised.clamp(0, 1)]).float().cpu()}
    return {}


def summarize(cfg, results: Results, out: Path) -> dict:
    arms = [a for a in results.values("arm") if ":" not in a]
    sizes = [*cfg.labels, *([0] if cfg.ceiling else [])]
    acc = {a: {_size(n): stats.summary(results.column("test_acc", arm=a, n=n))
               for n in sizes if results.where(arm=a, n=n).rows} for a in arms}
    val = {a: {_size(n): float(np.mean(results.column("val_acc", arm=a, n=n)))
               for n in sizes if results.where(arm=a, n=n).rows} for a in arms}
    counts = count_statuses(results)
    metrics = {"accuracy": acc, "val_accuracy": val, "status": counts, "tuning": _tuning(cfg, results, sizes),
               "comparisons": _comparisons(cfg, results, arms, counts), "bar": _bar(cfg, results, arms, counts),
               "n_labels": {_size(n): results.where(arm="supervised", n=n).rows[0]["n_labels"] for n in sizes},
               "validation_size": {"held-out split": _val_rows(cfg), "small": cfg.val_small or None}}
    if cfg.val_small:  # the few-label protocol: every choice again, on `val_small` labelled images
        metrics["accuracy_small_val"] = {a: {_size(n): stats.summary(results.column("test_acc_small", arm=a, n=n))
                                             for n in cfg.labels if results.where(arm=a, n=n).rows} for a in arms}
        metrics["comparisons_small_val"] = _comparisons(cfg, results, arms, counts, "_small")
        metrics["bar_small_val"] = _bar(cfg, results, arms, counts, "_small")
    if probe := _test_time_statistics(results, arms, cfg.labels):
        metrics["test_time_statistics"] = probe
    _figures(cfg, results, arms, metrics, out / "figures")
    return metrics


def _test_time_statistics(results: Results, arms: list[str], sizes: list[int]) -> dict:
    """The ladders' test accuracy with our test-time statistics (running) and the authors' (an exact
    clean pass over the labelled rows), paired by seed; validation says which to use. Only where every
    cell of an arm and label count measured both (cells stored before the probe existed did not)."""
    out = {}
    for a in arms:
        for n in sizes:
            rows = results.where(arm=a, n=n).rows
            if not rows or not all("test_acc_labelled_stats" in r for r in rows):
                continue
            col = lambda key: results.column(key, arm=a, n=n)  # noqa: E731
            val = {"running": float(np.mean(col("val_acc"))), "labelled": float(np.mean(col("val_acc_labelled_stats")))}
            diff = stats.paired(col("test_acc_labelled_stats"), col("test_acc"))
            chosen = max(val, key=val.get)
            lo, hi = diff["ci95"]
            out[f"{a} @{_size(n)}"] = {
                "test_running": stats.summary(col("test_acc")), "test_labelled": stats.summary(col("test_acc_labelled_stats")),
                "val": val, "chosen_on_validation": chosen, "labelled - running": diff,
                "verdict": f"{a} with {_size(n)} labels: the authors' test-time statistics against ours on test: "
                           f"{stats.verdict(diff)} ({diff['mean']:+.3f}, 95% CI {lo:+.3f} to {hi:+.3f}); "
                           f"validation prefers {'theirs' if chosen == 'labelled' else 'ours'}"}
    return out


def _size(n: int) -> str:
    return str(n) if n else "all"


def _tuning(cfg, results: Results, sizes: list[int]) -> dict:
    """The tuned arms' settings per label count, every candidate's validation accuracy beside the choice:
    the supervised baseline's network, noise and learning rate; VAT's eps (under the small validation
    set too, when the study has one)."""
    protocols = [("val_acc", ""), *([("val_acc_small", "_small")] if cfg.val_small else [])]  # (key, suffix)
    out = {}
    for n in sizes:
        tried = {c.arm: results.one(arm=c.arm, n=n) for c in tune_cells(cfg, n)}
        names = {a: "{} noise={:.0e} lr={:.0e}".format(*tuned(a)) for a in tried}  # no dots: the report splits on them
        vat = {c.arm: results.one(arm=c.arm, n=n) for c in vat_cells(cfg, n)} if n else {}
        row = out[_size(n)] = {}
        for key, sfx in protocols:
            arch, noise, lr = tuned(max(tried, key=lambda a: tried[a][key]))
            row[key] = {names[a]: r[key] for a, r in tried.items()}
            row.update({f"chosen_arch{sfx}": arch, f"chosen_noise{sfx}": noise, f"chosen_lr{sfx}": lr})
            if vat:
                row[f"vat_{key}"] = {f"eps={tuned(a):.0e}": r[key] for a, r in vat.items()}
                row[f"vat_chosen_eps{sfx}"] = tuned(max(vat, key=lambda a: vat[a][key]))
    return out


def _val_rows(cfg) -> int:
    """Images in the held-out labelled validation split (the papers' protocol)."""
    from ..data.device import split_rows
    from .base import dataset_of

    return len(split_rows(len(dataset_of(cfg).y_train), cfg.data.val_fraction, cfg.seed)[1])


def _comparisons(cfg, results: Results, arms: list[str], counts: dict, protocol: str = "") -> dict:
    """Each arm against the supervised baseline, paired by seed, per label count: the difference of
    test accuracies, its 95% interval and the verdict read off it (`protocol` "_small": each cell's
    point and each tuned setting chosen on the small validation set)."""
    out = {}
    for n in cfg.labels:
        base = results.column(f"test_acc{protocol}", arm="supervised", n=n)
        for a in arms:
            if a != "supervised":
                d = stats.paired(results.column(f"test_acc{protocol}", arm=a, n=n), base)
                out[f"{a} - supervised @{n}"] = {"diff": d, "verdict": qualify(
                    f"{a} vs supervised with {n} labels: {stats.verdict(d)}", (a, "supervised"), counts)}
    return out


def _bar(cfg, results: Results, arms: list[str], counts: dict, protocol: str = "") -> dict:
    """The best autoencoder-family arm at the fewest labels, chosen by mean validation accuracy, on test:
    against the target, and against the tuned supervised baseline (paired, 95% interval); beside it,
    each reference arm (VAT) against that best arm. `protocol` "_small": everything chosen on the small
    validation set."""
    n, test_key, val_key = cfg.labels[0], f"test_acc{protocol}", f"val_acc{protocol}"
    family = [a for a in arms if a != "supervised" and a not in REFERENCE]
    if not family:
        return {"labels": n, "note": "no autoencoder-family arm besides the supervised baseline ran"}
    best = max(family, key=lambda a: np.mean(results.column(val_key, arm=a, n=n)))
    test = stats.summary(results.column(test_key, arm=best, n=n))
    base = stats.summary(results.column(test_key, arm="supervised", n=n))
    d = stats.paired(results.column(test_key, arm=best, n=n), results.column(test_key, arm="supervised", n=n))
    beats = stats.verdict(d) == "better"
    met = test["mean"] >= cfg.target
    miss = "" if met else f" by {cfg.target - test['mean']:.3f}"
    val = "the small validation set" if protocol else "validation"
    out = {"labels": n, "target": cfg.target, "best_arm": best, "chosen_by": f"mean {val_key}",
           "test": test, "supervised": base, "best_minus_supervised": d, "met": met, "beats_supervised": beats,
           "verdict": qualify(f"{best} (chosen on {val}): {test['mean']:.3f} test accuracy with {n} labels, "
                              f"{'meets' if met else 'misses'} the {cfg.target:.2f} bar{miss}; "
                              f"against the tuned supervised baseline ({base['mean']:.3f}): {stats.verdict(d)} "
                              f"({d['mean']:+.3f}, 95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})",
                              (best, "supervised"), counts)}
    for ref in (a for a in REFERENCE if a in arms):
        r = stats.paired(results.column(test_key, arm=best, n=n), results.column(test_key, arm=ref, n=n))
        out[f"{best} - {ref}"] = {"diff": r, "verdict": qualify(
            f"{best} vs {ref} (outside the autoencoder family) with {n} labels: {stats.verdict(r)} "
            f"({r['mean']:+.3f}, 95% CI {r['ci95'][0]:+.3f} to {r['ci95'][1]:+.3f})", (best, ref), counts)}
    return out


def _figures(cfg, results: Results, arms: list[str], metrics: dict, fig: Path) -> None:
    sizes = [*cfg.labels, *([0] if cfg.ceiling else [])]
    x = {n: metrics["n_labels"][_size(n)] for n in sizes}
    ys = {}
    for a in arms:
        ns = [n for n in sizes if results.where(arm=a, n=n).rows]
        ys[a] = (np.array([np.mean(results.column("test_acc", arm=a, n=n)) for n in ns]),
                 np.array([np.std(results.column("test_acc", arm=a, n=n)) for n in ns]))
    sup_x = [x[n] for n in sizes if results.where(arm="supervised", n=n).rows]
    plots.save(_accuracy_plot([x[n] for n in cfg.labels], ys, sup_x), fig / "accuracy_vs_labels.png")
    first = results.where(seed=cfg.seed, n=cfg.labels[0])
    for a, title in (("m2", "M1+M2"), ("aae", "semi-supervised AAE")):
        rows = first.where(arm=a).rows
        if rows and "style_grid" in rows[0]:
            plots.save(plots.image_grid(rows[0]["style_grid"], 10, f"{title}: one row per class, the style "
                                        "held fixed down each column"), fig / f"style_class_{a}.png")
    rows = first.where(arm="ladder-full").rows
    if rows and "ladder_layers" in rows[0]:
        plots.save(plots.image_grid(rows[0]["ladder_layers"], 10, "full ladder, input layer: clean / corrupted "
                                    "/ denoised (the hidden layers are not images)"), fig / "ladder_denoised.png")


def _accuracy_plot(xs: list[int], ys: dict, sup_x: list[int]):
    """Test accuracy against labelled images, one line per arm; the supervised one runs on to every label."""
    fig = plots.metric_vs(xs, {a: v for a, v in ys.items() if a != "supervised"}, "labelled images (in all)",
                          "test accuracy", "Test accuracy vs labels (mean ± std over seeds)", logx=True)
    if "supervised" in ys:
        ax, (mean, std) = fig.axes[0], ys["supervised"]
        ax.plot(sup_x, mean, marker="s", markersize=4, color="black", label="supervised (to every label)")
        ax.fill_between(sup_x, mean - std, mean + std, color="black", alpha=0.1, linewidth=0)
        ax.legend(fontsize="small")
    return fig
