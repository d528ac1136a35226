"""The hashing study's summaries (from the per-seed measurements) and its neighbours pages; the tuning
grid and choice both the study and its summary read (this module never imports the study's)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import stats
from ..convergence import count_statuses, qualify
from ..report import plots
from ..retrieval import nearest


def settings(cfg, method: str) -> list[dict]:
    """The method's candidate model fields, from its grid."""
    key, grid = {"semhash": (("noise_std",), cfg.tune_noise), "hash-ste": (("balance", "decorrelate"), cfg.tune_ste),
                 "hash-bihalf": (("gamma",), cfg.tune_gamma), "hash-sgh": (("balance",), cfg.tune_sgh)}[method]
    return [{k: v for k in key} for v in grid]


def chosen(cfg, deps: dict) -> tuple[str, dict]:
    """(best AE code, {method: setting}) from the tune cells' validation mAPs."""
    best: dict[str, tuple[float, str, dict]] = {}
    for row in deps.values():
        method = row["arm"].removeprefix("tune:")
        for suffix in ("", "+rot"):
            v = row["map" + suffix.replace("+", "_")]
            if v > best.get(method, (-1.0,))[0]:
                best[method] = (v, method + suffix, settings(cfg, method)[row["point"]])
    top = max(best.values(), key=lambda t: t[0])
    return top[1], {m: s for m, (_, _, s) in best.items()}


def neighbour_images(tr_bits, te_bits, x_tr: torch.Tensor, x_te: torch.Tensor, cfg) -> np.ndarray:
    """Each row a test query, then its nearest index images by Hamming distance: (q * (n + 1), C, H, W)
    uint8, stored with the cell so the figure is drawn from the record."""
    q = min(cfg.show_queries, len(x_te))
    idx = nearest(te_bits[:q], tr_bits, cfg.neighbours)  # (q, n)
    rows = [torch.cat([x_te[i:i + 1], x_tr[torch.as_tensor(idx[i])]]) for i in range(q)]
    return (torch.cat(rows) * 255).round().to(torch.uint8).cpu().numpy()


def neighbours_pages(cfg, results, figs: Path) -> None:
    for row in results.where(seed=cfg.seed, n=cfg.tune_bits):
        for key in [k for k in row if k.startswith("nb:")]:
            code = key[3:]
            title = f"{code}: query, then its {cfg.neighbours} nearest training images ({cfg.tune_bits} bits)"
            grid = np.asarray(row[key], dtype=np.float32) / 255
            plots.save(plots.image_grid(grid, nrow=cfg.neighbours + 1, title=title), figs / f"neighbours_{code}.png")


def _sentence(what: str, diff: dict) -> str:
    word = stats.verdict(diff, higher_is_better=True)
    lo, hi = diff["ci95"]
    return f"{what}: {word} ({diff['mean']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}], {diff['n']} paired seeds)"


def vs_itq(per_bits: dict, bits: int, counts: dict) -> tuple[dict, dict]:
    """Paired differences of every AE code minus PCA-ITQ, per protocol, for mAP and mAP@R; verdicts."""
    diffs, verdicts = {}, {}
    for code, by_proto in per_bits.items():
        if code in ("itq", "lsh", "sh", "cnn"):
            continue
        for proto, vals in by_proto.items():
            ref = per_bits["itq"][proto]
            for key in [k for k in vals if k.startswith("map")]:
                d = stats.paired(vals[key], ref[key])
                diffs.setdefault(proto, {}).setdefault(code, {})[key] = d
                if key == "map":
                    verdicts[f"{proto} {code}"] = qualify(_sentence(f"{code} vs PCA-ITQ, {proto} mAP at {bits} bits",
                                                                    d), [code.removesuffix("+rot")], counts)
    return diffs, verdicts


def bar(per: dict, best: str, bits: int, counts: dict) -> str:
    """The bar: the AE code chosen on validation, test-protocol whole-ranking mAP vs PCA-ITQ."""
    if best not in per[bits]:
        return f"{bits} bits: {best} was not run"
    d = stats.paired(per[bits][best]["test"]["map"], per[bits]["itq"]["test"]["map"])
    met = "met" if stats.verdict(d) == "better" else "missed"
    return qualify(_sentence(f"bar {met} at {bits} bits; {best} (chosen on validation) vs PCA-ITQ, test mAP", d),
                   [best.removesuffix("+rot")], counts)


def collect(cfg, results) -> dict:
    """per[bits][code][protocol][metric] -> values ordered by seed (skipped cells left out)."""
    per: dict = {}
    for row in sorted(results, key=lambda r: r["seed"]):
        for code, by_proto in (row.get("codes") or {}).items():
            for proto, vals in by_proto.items():
                if proto == "test" and "saturation" in row and not code.endswith("+rot"):
                    vals = {**vals, "saturation": row["saturation"]}
                for key, v in vals.items():
                    per.setdefault(row["n"], {}).setdefault(code, {}).setdefault(proto, {}).setdefault(key, []).append(v)
    return per


def tuning(cfg, results) -> dict:
    """The validation record: every setting's mAP (own bits and rotated), each method's setting, the
    best AE code."""
    rows = {f"{r['arm']}.{r['point']}": r for r in results if r["arm"].startswith("tune:")}
    best, setting = chosen(cfg, rows)
    val = {}
    for r in rows.values():
        m = r["arm"].removeprefix("tune:")
        val[f"{m} {settings(cfg, m)[r['point']]}"] = r["map"]
        val[f"{m}+rot {settings(cfg, m)[r['point']]}"] = r["map_rot"]
    return {"val_map": val, "setting": setting, "best_ae": best, "best_ae_val_map": max(val.values())}


def metrics(cfg, results, out: Path) -> dict:
    """metrics.json: per bits and protocol, every code's summaries; the paired differences vs ITQ with
    verdicts; the bar verdict per bits; the tuning record and the setup; the neighbours pages."""
    per, tuned = collect(cfg, results), tuning(cfg, results)
    counts = count_statuses(results)
    res: dict = {"status": counts}
    for bits, codes in per.items():
        block: dict = {}
        for code, by_proto in codes.items():
            for proto, vals in by_proto.items():
                block.setdefault(proto, {})[code] = {k: stats.summary(v) for k, v in vals.items()}
        block["vs_itq"], block["vs_itq_verdicts"] = vs_itq(codes, bits, counts)
        res[f"b{bits}"] = block
    res["bar_verdict"] = {f"b{b}": bar(per, tuned["best_ae"], b, counts) for b in per}
    res["tuning"] = tuned
    res["setup"] = {"bits": list(cfg.bits), "methods": list(cfg.methods), "hidden": list(cfg.hidden),
                    "steps": cfg.steps, "budget": cfg.budget, "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
                    "k": cfg.k, "radius": cfg.radius, "map_at": cfg.map_at, "per_class": cfg.per_class,
                    "protocols": {"test": "every test image queries the training set",
                                  "lit": f"{cfg.per_class} test images per class query the other images"},
                    "ties": "expected AP, AP@R and precision@k under a uniformly random order of equal distances"}
    neighbours_pages(cfg, results, out / "figures")
    return res
