"""The hashing study's summaries (from the per-seed measurements) and its neighbours pages."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import stats
from ..report import plots
from ..retrieval import nearest


def neighbours_page(codes: dict, x_tr: torch.Tensor, x_te: torch.Tensor, cfg, figs: Path) -> None:
    """Per code: each row a test query, then its nearest training images by Hamming distance."""
    q = min(cfg.show_queries, len(x_te))
    for m, (tr_bits, te_bits, *_) in codes.items():
        idx = nearest(te_bits[:q], tr_bits, cfg.neighbours)  # (q, n)
        rows = [torch.cat([x_te[i:i + 1], x_tr[torch.as_tensor(idx[i])]]) for i in range(q)]
        grid = torch.cat(rows).cpu().numpy()
        title = f"{m}: query, then its {idx.shape[1]} nearest training images ({cfg.tune_bits} bits)"
        plots.save(plots.image_grid(grid, nrow=idx.shape[1] + 1, title=title), figs / f"neighbours_{m}.png")


def _sentence(what: str, diff: dict) -> str:
    word = stats.verdict(diff, higher_is_better=True)
    lo, hi = diff["ci95"]
    return f"{what}: {word} ({diff['mean']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}], {diff['n']} paired seeds)"


def vs_itq(per_bits: dict, bits: int) -> tuple[dict, dict]:
    """Paired differences of every AE code minus PCA-ITQ, per protocol, for mAP and mAP@R; verdicts."""
    diffs, verdicts = {}, {}
    for code, by_proto in per_bits.items():
        if code in ("itq", "lsh", "cnn"):
            continue
        for proto, vals in by_proto.items():
            ref = per_bits["itq"][proto]
            for key in [k for k in vals if k.startswith("map")]:
                d = stats.paired(vals[key], ref[key])
                diffs.setdefault(proto, {}).setdefault(code, {})[key] = d
                if key == "map":
                    verdicts[f"{proto} {code}"] = _sentence(f"{code} vs PCA-ITQ, {proto} mAP at {bits} bits", d)
    return diffs, verdicts


def bar(per: dict, best: str, bits: int) -> str:
    """The bar: the AE code chosen on validation, test-protocol whole-ranking mAP vs PCA-ITQ."""
    if best not in per[bits]:
        return f"{bits} bits: {best} was not run"
    d = stats.paired(per[bits][best]["test"]["map"], per[bits]["itq"]["test"]["map"])
    met = "met" if stats.verdict(d) == "better" else "missed"
    return _sentence(f"bar {met} at {bits} bits; {best} (chosen on validation) vs PCA-ITQ, test mAP", d)


def metrics(cfg, per: dict, tuned: dict) -> dict:
    """metrics.json: per bits and protocol, every code's summaries; the paired differences vs ITQ with
    verdicts; the bar verdict per bits; the tuning record and the setup."""
    res: dict = {}
    for bits, codes in per.items():
        block: dict = {}
        for code, by_proto in codes.items():
            for proto, vals in by_proto.items():
                block.setdefault(proto, {})[code] = {k: stats.summary(v) for k, v in vals.items()}
        block["vs_itq"], verdicts = vs_itq(codes, bits)
        block["vs_itq_verdicts"] = verdicts
        res[f"b{bits}"] = block
    res["bar_verdict"] = {f"b{b}": bar(per, tuned["best_ae"], b) for b in per}
    res["tuning"] = tuned
    res["setup"] = {"bits": list(cfg.bits), "methods": list(cfg.methods), "hidden": list(cfg.hidden),
                    "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
                    "k": cfg.k, "radius": cfg.radius, "map_at": cfg.map_at, "per_class": cfg.per_class,
                    "protocols": {"test": "every test image queries the training set",
                                  "lit": f"{cfg.per_class} test images per class query the other images"},
                    "ties": "expected AP, AP@R and precision@k under a uniformly random order of equal distances"}
    return res
