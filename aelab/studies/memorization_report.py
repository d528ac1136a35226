"""The memorisation study's records -> intervals, paired differences, verdicts and figures.

Nothing here is typed by hand: every verdict word comes from `stats.verdict` on a paired interval.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import stats
from ..convergence import count_statuses, qualify
from ..report import plots

# metric -> whether higher is better (probe_score: lower = less of the input kept, what the seed wants)
HIGHER = {"test_acc": True, "train_acc": True, "gap_acc": False, "gap_ce": False, "ece": False,
          "mia_adv": False, "probe_score": False, "probe_mse": True, "noise_memorised": False,
          "noise_test_acc": True}
PLOTTED = ("test_acc", "gap_acc", "gap_ce", "ece", "mia_adv", "probe_score", "noise_memorised")
# how much of the input the code keeps is an aim, not a quality: the penalty wants it lower, the
# supervised autoencoder higher, so its verdicts say "higher"/"lower" rather than "better"/"worse"
DIRECTIONAL = {"probe_score", "probe_mse"}
NAMES = {"test_acc": "test accuracy", "mia_adv": "membership-inference advantage",
         "probe_score": "probe score", "noise_memorised": "noisy labels memorised",
         "gap_acc": "accuracy gap"}


def arms(cfg) -> dict[str, dict]:
    """Arm name -> model-config overrides; 'plain' (lam = 0) is the reference; the tuned baselines'
    overrides come from their tuning cells (`TUNED`)."""
    out: dict[str, dict] = {}
    for lam in sorted(cfg.lambdas):
        name = "plain" if lam == 0 else f"lam={lam:+g}"
        out[name] = {"lam": abs(lam), "mode": "plus" if lam < 0 else "minus"}
    top = max(cfg.lambdas)
    for form in cfg.bounded if top > 0 else ():
        out[f"{form} lam={top:g}"] = ({"lam": top, "layernorm": True} if form == "layernorm"
                                      else {"lam": top, "mode": form})
    return out | {name: {} for name in TUNED}


TUNED = {"weight decay": ("weight_decay", "tune_wd"), "dropout": ("dropout", "tune_dropout"),
         "vib": ("vib_beta", "tune_vib")}  # baseline -> (its override, the config field of its grid)


def grid(cfg, baseline: str) -> list[dict]:
    key, field_name = TUNED[baseline]
    return [{key: v} for v in getattr(cfg, field_name)]


def _column(runs: list[dict], metric: str) -> list[float]:
    return [r[metric] for r in runs]


def _word(diff: dict, metric: str) -> str:
    if metric in DIRECTIONAL:
        return {"better": "higher", "worse": "lower"}.get(stats.verdict(diff), "no measurable difference")
    return stats.verdict(diff, HIGHER.get(metric, True))


def _per_size(runs_by_arm: dict[str, list[dict]]) -> dict:
    """Summaries per arm, and paired differences with verdicts against 'plain'."""
    base = runs_by_arm["plain"]
    metrics = [k for k in base[0] if not k.startswith("ref_")]
    out = {"arms": {a: {m: stats.summary(_column(r, m)) for m in base[0]} for a, r in runs_by_arm.items()},
           "vs_plain": {}}
    for arm, runs in runs_by_arm.items():
        if arm == "plain":
            continue
        diffs = {}
        for m in metrics:
            d = stats.paired(_column(runs, m), _column(base, m))
            diffs[m] = d | {"verdict": _word(d, m)}
        out["vs_plain"][arm] = diffs
    return out


def _phrase(diffs: dict, metric: str) -> str:
    d = diffs[metric]
    lo, hi = d["ci95"]
    return f"{NAMES.get(metric, metric)} {d['verdict']} ({d['mean']:+.3g}, 95% CI [{lo:+.3g}, {hi:+.3g}])"


def _sentence(key: str, per: dict, lam: float) -> str:
    """One computed sentence per N about the seed's arm (CE - lam R) and the opposite sign."""
    parts = []
    for arm, label in ((f"lam={lam:+g}", f"the memorisation penalty CE - {lam:g}*R"),
                       (f"lam={-lam:+g}", f"the supervised autoencoder CE + {lam:g}*R")):
        if arm in per["vs_plain"]:
            diffs = per["vs_plain"][arm]
            shown = [_phrase(diffs, m) for m in ("test_acc", "mia_adv", "probe_score", "noise_memorised") if m in diffs]
            parts.append(f"{label} vs plain training: " + "; ".join(shown))
    n = per["arms"]["plain"]["test_acc"]["n"]
    return f"{key} ({n} paired seeds): " + (". ".join(parts) if parts else "no lambda arm to compare") + "."


def _figures(records: dict, shown: list[dict], lambdas: list[float], fig_dir: Path) -> None:
    lam_arms = ["plain" if lam == 0 else f"lam={lam:+g}" for lam in lambdas]
    for metric in PLOTTED:
        ys = {}
        for key, by_arm in records.items():
            if metric in by_arm["plain"][0]:
                cols = [np.array(_column(by_arm[a], metric)) for a in lam_arms]
                ys[key] = (np.array([c.mean() for c in cols]), np.array([c.std(ddof=0) for c in cols]))
        if ys:
            fig = plots.metric_vs(lambdas, ys, "lambda (< 0: CE + |lam| R, > 0: CE - lam R)",
                                  metric, f"{metric} against lambda (mean ± std over seeds)")
            plots.save(fig, fig_dir / f"{metric}_vs_lambda.png")
    if not shown:
        return
    for term in ("ce", "R", "test_acc"):
        ys = {r["arm"]: (np.array([c[term] for c in r["train_curve"]]), None) for r in shown if r["train_curve"]}
        x = np.arange(1, len(next(iter(ys.values()))[0]) + 1)
        plots.save(plots.metric_vs(x, ys, "epoch", term, f"{term} over training (first seed, largest N)"),
                   fig_dir / f"curve_{term}.png")
    rows = {"original": shown[0]["originals"], "class mean": shown[0]["class_means"]} | \
        {r["arm"]: r["recons"] for r in shown}  # one test image per class, in each row
    fig = plots.image_grid(np.concatenate(list(rows.values())), len(shown[0]["originals"]),
                           title="rows: " + ", ".join(rows))
    plots.save(fig, fig_dir / "probe_reconstructions.png")


def _tuning(cfg, results) -> dict:
    """Per N and baseline: its grid, each point's validation accuracy and the point chosen."""
    out: dict = {}
    for row in results.where(arm="plain", seed=cfg.seed):
        key = f"N={row['n_train']}"
        out[key] = {}
        for b in TUNED:
            accs = [r["val_acc"] for r in sorted(results.where(arm=f"tune:{b}", n=row["n"]), key=lambda r: r["point"])]
            out[key][b] = {"grid": grid(cfg, b), "val_acc": accs, "chosen": grid(cfg, b)[int(np.argmax(accs))]}
    return out


def report(cfg, results, out: Path) -> dict:
    """The study's metrics from its stored cells (the runner writes them); figures under out/figures."""
    lam = cfg.headline_lambda if cfg.headline_lambda in cfg.lambdas else max(cfg.lambdas)
    records: dict = {}
    for n in results.where(arm="plain").values("n"):
        rows = results.where(n=n)
        key = f"N={rows.where(arm='plain').rows[0]['n_train']}"
        records[key] = {a: [{m: r[m] for m in r if m in HIGHER or m.startswith("ref_")}
                            for r in sorted(rows.where(arm=a), key=lambda r: r["seed"])] for a in arms(cfg)}
    metrics: dict = {"verdict": {}, "status": count_statuses(results)}
    for n, (key, by_arm) in zip(results.where(arm="plain").values("n"), records.items()):
        per = _per_size(by_arm)
        arms_named = ("plain", f"lam={abs(lam):+g}", f"lam={-abs(lam):+g}")
        per["verdict"] = metrics["verdict"][key] = qualify(_sentence(key, per, abs(lam)), arms_named,
                                                           count_statuses(results.where(n=n)))
        metrics[key] = per
    metrics["tuning"] = _tuning(cfg, results)
    shown = [r for r in results if "train_curve" in r]
    _figures(records, shown, sorted(cfg.lambdas), Path(out) / "figures")
    return metrics
