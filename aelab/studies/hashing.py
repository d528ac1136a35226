"""Semantic hashing: binary codes from autoencoders against LSH, PCA-ITQ and a CNN, at 16, 32 and 64 bits.

AE methods (`aelab.models`): `semhash` (the seed's noisy logistic, Salakhutdinov & Hinton 2009: the
reference arm), `hash-ste` (straight-through bits with balance and decorrelation terms), `hash-bihalf`
(the bi-half layer, Li & van Gemert 2021) and `hash-sgh` (stochastic bits, Dai et al. 2017). Each AE
also gives a second code, `<method>+rot`: its code inputs rotated by ITQ's alternation (the rotation
and centring fold into the encoder's last linear layer), fitted on the training codes.
Baselines fitted in the same run on the same seed: random-projection LSH and PCA-ITQ on the pixels, and
the rounded logistic penultimate layer of a CNN classifier (Guo & Li 2015; it uses the labels: its own
league).

Choices read the validation split only: each method's setting (grid below) is picked by mAP of the
validation images against the rest of the training set at `tune_bits`; the best AE code is picked by
the same validation mAP; the test set only reports. Two protocols, both with expected (tie-fair)
metrics (`aelab.retrieval`): `test` (every test image queries the whole training set) and `lit` (the
literature's: 100 test images per class query the other 69,000 images), each with mAP over the whole
ranking, mAP@1000, precision@k, Gini impurity of the radius-0 and radius-2 balls and bucket counts.

    aelab study hashing data=fashion-mnist        # 5 seeds; time in README (hashing)
    aelab study hashing data=fashion-mnist quick=true
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data import load_dataset
from ..data.device import DeviceData, pick_device, to_device
from ..errors import ConfigError
from ..models import build_model, get_model_class
from ..retrieval import evaluate_hash, literature_queries
from .base import StudyConfig, each_seed, note, register_study, train_seeds
from .hashing_baselines import ITQ, LSH
from .hashing_classifier import apply_batched, images, train_classifier
from .hashing_report import metrics, neighbours_page

AE_METHODS = ("semhash", "hash-ste", "hash-bihalf", "hash-sgh")


@dataclass
class HashingConfig(StudyConfig):
    bits: tuple[int, ...] = (16, 32, 64)  # code lengths; every method at each
    methods: tuple[str, ...] = AE_METHODS  # the AE methods (registered hashing models)
    # at bit counts other than tune_bits, train only the AE method chosen on validation (CPU budget)
    all_methods_all_bits: bool = False
    tune_bits: int = 32  # where settings and the best AE method are chosen (validation split)
    hidden: tuple[int, ...] = (512, 256)  # every AE's hidden layers below the code
    # each method's grid, chosen by validation mAP. A GPU sweep on Fashion-MNIST's validation split
    # (README, hashing) found bi-half's pull best at 50-100, STE's terms and SGH's balance at 100 (10
    # and 0 were worse), semhash's noise at 32 (an earlier session's grid 2-64); one value each where
    # the sweep was clear, to keep the CPU run short
    tune_noise: tuple[float, ...] = (32.0,)  # semhash: noise std
    tune_ste: tuple[float, ...] = (100.0,)  # hash-ste: balance = decorrelate weight
    tune_gamma: tuple[float, ...] = (50.0, 100.0)  # hash-bihalf: pull
    tune_sgh: tuple[float, ...] = (100.0,)  # hash-sgh: balance weight
    val_fraction: float = 0.1  # training images held out as validation queries
    k: int = 100  # precision@k
    radius: int = 2  # Hamming ball for the lookup statistics
    map_at: int = 1000  # mAP@R's R
    per_class: int = 100  # queries per class of the literature protocol
    cnn_epochs: int = 3  # the CNN-hash baseline's training epochs
    cnn_bits: tuple[int, ...] = (32,)  # bit counts with the CNN baseline (3 CPU-minutes a seed each)
    show_queries: int = 8  # rows of the neighbours page
    neighbours: int = 10  # neighbours shown per query
    # short training: validation mAP peaked after 2-4 epochs and fell with more (README, hashing)
    seeds: int = 5  # paired seeds: the AE-ITQ differences need more than 3 for a 95% interval clear of 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4, batch_size=512, progress="off"))

    def check(self) -> None:
        super().check()
        if not self.bits or any(not 1 <= b <= 255 for b in self.bits) or self.tune_bits not in self.bits:
            raise ConfigError("bits must be in [1, 255], and tune_bits one of them")
        unknown = [m for m in self.methods if m not in AE_METHODS]
        if not self.methods or unknown:
            raise ConfigError(f"methods must be some of {', '.join(AE_METHODS)}; got {list(self.methods)}")
        if self.k <= 0 or self.radius < 0 or self.cnn_epochs <= 0 or self.map_at <= 0 or self.per_class <= 0:
            raise ConfigError("k, map_at, per_class and cnn_epochs must be > 0 and radius >= 0")
        grids = (self.tune_noise, self.tune_ste, self.tune_gamma, self.tune_sgh)
        if any(not g or min(g) < 0 for g in grids) or not 0 < self.val_fraction < 1:
            raise ConfigError("the tune_* grids must be non-empty and >= 0, val_fraction in (0, 1)")


def settings(cfg: HashingConfig, method: str) -> list[dict]:
    """The method's candidate model fields, from its grid."""
    key, grid = {"semhash": (("noise_std",), cfg.tune_noise), "hash-ste": (("balance", "decorrelate"), cfg.tune_ste),
                 "hash-bihalf": (("gamma",), cfg.tune_gamma), "hash-sgh": (("balance",), cfg.tune_sgh)}[method]
    return [{k: v for k in key} for v in grid]


def build_ae(shape, cfg: HashingConfig, method: str, bits: int, setting: dict):
    mcfg = get_model_class(method).Config(name=method, latent_dim=bits, hidden=tuple(cfg.hidden), **setting)
    return build_model(mcfg, shape)


def code_inputs(model, data: DeviceData) -> np.ndarray:
    """The code units' inputs (N, bits) for every image: bit = input > 0."""
    model.eval()
    return apply_batched(model.code_inputs, images(data)).numpy()


def ae_codes(model, fit_part: DeviceData, others: list[DeviceData], bits: int, seed: int) -> dict:
    """{method: [bits of fit_part, bits of each other split]} for the AE's own bits and the ITQ-rotated
    code inputs (rotation fitted on fit_part's codes only)."""
    a = [code_inputs(model, d) for d in [fit_part, *others]]
    rot = ITQ(bits, seed=seed).fit(a[0])
    return {"": [x > 0 for x in a], "+rot": [rot.transform(x) for x in a]}


def saturation(model, data: DeviceData) -> float:
    """Share of code units within 0.1 of 0 or 1 after the logistic (|a| > logit(0.9)): how cleanly
    the method made them bits before rounding."""
    return float((np.abs(code_inputs(model, data)) > np.log(9.0)).mean())


def flat(data: DeviceData) -> np.ndarray:
    return images(data).flatten(1).cpu().numpy()


def pixel_codes(fit_part: DeviceData, others: list[DeviceData], bits: int, seed: int) -> dict:
    """PCA-ITQ and LSH bits of the pixels, fitted on fit_part."""
    x = [flat(d) for d in [fit_part, *others]]
    itq, lsh = ITQ(bits, seed=seed).fit(x[0]), LSH(bits, seed=seed).fit(x[0])
    return {"itq": [itq.transform(v) for v in x], "lsh": [lsh.transform(v) for v in x]}


def tune(cfg: HashingConfig, shape, split) -> dict:
    """Validation mAP of every (code, setting) at tune_bits; per method the setting of its best code
    (own bits or rotated), and the best AE code overall."""
    y_fit, y_val = split.train.y.cpu().numpy(), split.val.y.cpu().numpy()

    def val_map(fit_bits, val_bits) -> float:
        return evaluate_hash(val_bits, y_val, fit_bits, y_fit, cfg.k, cfg.radius, cfg.map_at)["map"]

    scores = {m: val_map(*b) for m, b in pixel_codes(split.train, [split.val], cfg.tune_bits, cfg.seed).items()}
    best: dict[str, tuple[float, str, dict]] = {}  # method -> (val mAP, code, setting)
    for method in cfg.methods:
        for setting in settings(cfg, method):
            build = lambda: build_ae(shape, cfg, method, cfg.tune_bits, setting)  # noqa: E731
            model = train_seeds(cfg, build, split.train, cfg.train, [cfg.seed])[0]
            for suffix, b in ae_codes(model, split.train, [split.val], cfg.tune_bits, cfg.seed).items():
                scores[f"{method}{suffix} {setting}"] = v = val_map(*b)
                if v > best.get(method, (-1.0,))[0]:
                    best[method] = (v, method + suffix, setting)
            note(f"hashing: tuned {method} {setting}")
    top = max(best.values(), key=lambda t: t[0])  # the best AE code by validation mAP
    return {"val_map": scores, "setting": {m: s for m, (_, _, s) in best.items()},
            "best_code": {m: c for m, (_, c, _) in best.items()}, "best_ae": top[1], "best_ae_val_map": top[0]}


def seed_codes(cfg, shape, ncls, base, lit, bits: int, seed: int, methods, aes) -> dict:
    """{code name: (index bits, query bits)} for both protocols: test (train index, test queries) and
    lit (train + test minus the queries as index, the 100-per-class test queries)."""
    tr, te = base.train, base.test
    rest, q = te.subset(lit["rest"]), te.subset(lit["queries"])
    out = {}
    for m, model in zip(methods, aes):
        for suffix, (b_tr, b_te, b_rest, b_q) in ae_codes(model, tr, [te, rest, q], bits, seed).items():
            out[m + suffix] = (b_tr, b_te, b_rest, b_q)
    out.update({m: tuple(v) for m, v in pixel_codes(tr, [te, rest, q], bits, seed).items()})
    if bits in cfg.cnn_bits:
        cnn = train_classifier(tr, shape, ncls, cfg.train, cfg.cnn_epochs, seed, bits, "sigmoid")
        out["cnn"] = tuple(apply_batched(cnn.features, images(d)).numpy() > 0.5 for d in (tr, te, rest, q))
    return out


def measure(cfg, codes: dict, y: dict) -> dict:
    """{code name: {"test": metrics, "lit": metrics}} for one seed."""
    res = {}
    for m, (b_tr, b_te, b_rest, b_q) in codes.items():
        res[m] = {"test": evaluate_hash(b_te, y["test"], b_tr, y["train"], cfg.k, cfg.radius, cfg.map_at),
                  "lit": evaluate_hash(b_q, y["q"], np.concatenate([b_tr, b_rest]), y["lit_db"],
                                       cfg.k, cfg.radius, cfg.map_at)}
    return res


@register_study("hashing")
class HashingStudy:
    Config = HashingConfig

    def run(self, cfg: HashingConfig, out: Path) -> dict:
        if cfg.quick:
            cfg.train = replace(cfg.train, epochs=min(cfg.train.epochs, 2))
            cfg.cnn_epochs, cfg.seeds = 1, min(cfg.seeds, 3)
        ds = load_dataset(cfg.data.name, cfg.data.data_dir or None, cfg.data.download)
        device = pick_device(cfg.train.device)
        shape, ncls = ds.shape, max(ds.num_classes, int(ds.y_train.max()) + 1)
        tuned = tune(cfg, shape, to_device(ds, device, cfg.val_fraction, cfg.seed))
        base = to_device(ds, device, 0.0, cfg.seed)  # index = the whole training set
        y_te = base.test.y.cpu().numpy()
        # at most half of each class's test images query, so the rest of the test set stays in the index
        per_class = min(cfg.per_class, int(np.bincount(y_te).min()) // 2)
        queries = literature_queries(y_te, max(per_class, 1), cfg.seed)
        lit = {"queries": queries, "rest": np.setdiff1d(np.arange(len(y_te)), queries)}
        y = {"train": base.train.y.cpu().numpy(), "test": y_te, "q": y_te[queries],
             "lit_db": np.concatenate([base.train.y.cpu().numpy(), y_te[lit["rest"]]])}
        per: dict = {}  # per[bits][code][protocol][metric] -> list over seeds
        seeds = [cfg.seed + i for i in range(cfg.seeds)]
        best_method = tuned["best_ae"].removesuffix("+rot")
        for bits in cfg.bits:
            methods = cfg.methods if bits == cfg.tune_bits or cfg.all_methods_all_bits else (best_method,)
            aes = {m: train_seeds(cfg, lambda m=m: build_ae(shape, cfg, m, bits, tuned["setting"][m]), base.train,
                                  cfg.train, seeds) for m in methods}
            note(f"hashing: {bits} bits, the AEs of {len(seeds)} seed(s) trained")
            for i, seed in each_seed(cfg, f"hashing {bits} bits"):
                codes = seed_codes(cfg, shape, ncls, base, lit, bits, seed, methods, [aes[m][i] for m in methods])
                results = measure(cfg, codes, y)
                for m in methods:
                    results[m]["test"]["saturation"] = saturation(aes[m][i], base.test)
                for m, r in results.items():
                    for proto, vals in r.items():
                        for key, v in vals.items():
                            per.setdefault(bits, {}).setdefault(m, {}).setdefault(proto, {}).setdefault(key, []).append(v)
                if i == 0 and bits == cfg.tune_bits:
                    neighbours_page(codes, images(base.train), images(base.test), cfg, out / "figures")
        return metrics(cfg, per, tuned)
