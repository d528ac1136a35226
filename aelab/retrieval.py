"""Hamming-distance retrieval over packed bits: ranking metrics with fair ties, and bucket statistics.

Codes are bool arrays (N, B), packed into uint64 words (N, ceil(B/64)); the distance of a query to
every index code is XOR + popcount (`np.bitwise_count`), chunked over queries so memory stays small.
Distances are integers in [0, B], so a query's whole ranking is summarised by how many index items of
each class lie at each distance: `class_histograms` -> (Q, K, B+1) counts. Every metric is computed
from these histograms in closed form, so ties never need sorting:

* average precision is the EXPECTED AP when items at equal distance are ordered uniformly at random
  (McSherry & Najork 2008). For a relevant item in a tie block of n items (r relevant) preceded by
  N_b items (R_b relevant), at block position j: E[precision | relevant at j] =
  (R_b + 1 + (j-1)(r-1)/(n-1)) / (N_b + j), summed over j with harmonic numbers (digamma).
* precision@k is the expected precision over the tie block that the cut at k falls in.

10,000 queries against 60,000 32-bit codes take a few seconds on one core (tests/test_studies_hashing.py
has the opt-in benchmark).
"""
from __future__ import annotations

import numpy as np
from scipy.special import digamma, gammaln

_CHUNK_ELEMENTS = 1 << 19  # query x index distances per step: small enough to stay in cache


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """bool/0-1 (N, B) -> uint64 words (N, ceil(B/64)), zero-padded (padding adds no distance)."""
    bits = np.asarray(bits).astype(bool)
    n, b = bits.shape
    words = -(-b // 64)
    padded = np.zeros((n, words * 64), dtype=bool)
    padded[:, :b] = bits
    return np.packbits(padded, axis=1).view(np.uint64).reshape(n, words)


def hamming(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Packed (Q, W) and (N, W) -> Hamming distances (Q, N) as uint8 (B <= 255) or uint16."""
    d = np.bitwise_count(q[:, None, 0] ^ db[None, :, 0])
    for w in range(1, q.shape[1]):
        d = d.astype(np.uint16) + np.bitwise_count(q[:, None, w] ^ db[None, :, w])
    return d


def class_histograms(q: np.ndarray, db: np.ndarray, db_labels: np.ndarray, n_bits: int,
                     n_classes: int) -> np.ndarray:
    """(Q, K, B+1) int64: hist[i, c, d] = index items of class c at Hamming distance d from query i."""
    nq, nd = len(q), n_bits + 1
    out = np.zeros((nq, n_classes, nd), dtype=np.int64)
    for c in range(n_classes):
        block = db[db_labels == c]
        if not len(block):
            continue
        chunk = max(1, _CHUNK_ELEMENTS // len(block))
        for s in range(0, nq, chunk):
            d = hamming(q[s:s + chunk], block)  # (q, n_c)
            rows = np.arange(d.shape[0], dtype=np.int64)[:, None] * nd
            counts = np.bincount((d + rows).ravel(), minlength=d.shape[0] * nd)
            out[s:s + chunk, c] = counts.reshape(d.shape[0], nd)
    return out


def _harmonic(m: np.ndarray) -> np.ndarray:
    """H(m) = 1 + 1/2 + ... + 1/m (H(0) = 0), for float arrays."""
    return digamma(m + 1.0) + np.euler_gamma


def expected_ap(rel: np.ndarray, tot: np.ndarray) -> np.ndarray:
    """Expected average precision under random tie order; rel, tot (Q, G) per tie block, in rank order.

    Queries with no relevant item get NaN (AP is undefined for them).
    """
    rel, tot = rel.astype(np.float64), tot.astype(np.float64)
    n_before = np.cumsum(tot, axis=1) - tot  # N_b
    r_before = np.cumsum(rel, axis=1) - rel  # R_b
    b = np.where(tot > 1, (rel - 1) / np.maximum(tot - 1, 1), 0.0)  # (r-1)/(n-1)
    # sum_j (a + b(j-1)) / (N_b + j) = b*n + (a - b(1 + N_b)) * (H(N_b + n) - H(N_b))
    s = _tie_sum(r_before + 1, b, n_before, tot)
    contrib = np.where(tot > 0, rel / np.maximum(tot, 1) * s, 0.0)
    n_rel = rel.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, contrib.sum(axis=1) / n_rel, np.nan)


def expected_precision_at(rel: np.ndarray, tot: np.ndarray, k: int) -> np.ndarray:
    """Expected precision of the first k items (k capped at the index size) under random tie order."""
    rel, tot = rel.astype(np.float64), tot.astype(np.float64)
    k_eff = np.minimum(k, tot.sum(axis=1, keepdims=True))  # (Q, 1)
    n_before = np.cumsum(tot, axis=1) - tot
    take = np.clip(k_eff - n_before, 0, tot)  # items of each block inside the top k
    hits = (rel / np.maximum(tot, 1) * take).sum(axis=1)
    return hits / k_eff[:, 0]


def _tie_sum(a, b, n_before, n):
    """sum_{j=1..n} (a + b(j-1)) / (N_b + j), the expected precisions of a block's positions."""
    return b * n + (a - b * (1 + n_before)) * (_harmonic(n_before + n) - _harmonic(n_before))


def expected_ap_at(rel: np.ndarray, tot: np.ndarray, cut: int) -> np.ndarray:
    """Expected AP@cut under random tie order: sum_{k<=cut} P(k) rel(k) / (relevant items in the top
    cut), 0 when the top cut holds none (the normalisation of HashNet's and DeepBit's evaluation code).

    Only the tie block that the cut falls in is random: m of its r relevant items land in the t
    positions taken, m ~ Hypergeometric(n, r, t), and given m they sit uniformly in those positions,
    so the expectation is a sum over m of closed forms. rel, tot (Q, G) per tie block, in rank order.
    """
    rel, tot = rel.astype(np.float64), tot.astype(np.float64)
    q = np.arange(len(tot))
    cut = np.minimum(cut, tot.sum(axis=1))  # (Q,) capped at the index size
    ends = np.cumsum(tot, axis=1)
    c = np.argmax(ends >= cut[:, None], axis=1)  # the block the cut falls in
    n_b, n, r = ends[q, c] - tot[q, c], tot[q, c], rel[q, c]
    t = cut - n_b  # positions of block c inside the top cut, in [1, n]
    full = np.arange(tot.shape[1])[None, :] < c[:, None]  # blocks wholly inside the top cut
    n_before, r_before = np.cumsum(tot, axis=1) - tot, np.cumsum(rel, axis=1) - rel
    b = np.where(tot > 1, (rel - 1) / np.maximum(tot - 1, 1), 0.0)
    s_full = np.where(full & (tot > 0), rel / np.maximum(tot, 1) * _tie_sum(r_before + 1, b, n_before, tot), 0.0)
    s_full, r_in = s_full.sum(axis=1), np.where(full, rel, 0).sum(axis=1)
    m = np.arange(int(np.max(np.minimum(r, t), initial=0)) + 1, dtype=np.float64)[None, :]  # (1, M)
    pmf = _hypergeom_pmf(m, n[:, None], r[:, None], t[:, None])  # (Q, M), 0 outside the support
    bm = np.where(t[:, None] > 1, (m - 1) / np.maximum(t[:, None] - 1, 1), 0.0)
    part = m / t[:, None] * _tie_sum(r_in[:, None] + 1, bm, n_b[:, None], t[:, None])
    hits = r_in[:, None] + m
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(hits > 0, (s_full[:, None] + part) / hits, 0.0)
    return (np.nan_to_num(pmf) * ap).sum(axis=1)


def _hypergeom_pmf(m: np.ndarray, n: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """P(m relevant among t drawn without replacement from n holding r), 0 outside the support; from
    log-gammas (scipy.stats.hypergeom.pmf gives the same numbers, ~50x slower on (1000, 1000) grids)."""
    ok = (m <= r) & (m <= t) & (t - m <= n - r)
    m = np.where(ok, m, 0.0)
    lg = lambda v: gammaln(v + 1.0)  # noqa: E731  log(v!)
    log_p = (lg(r) - lg(m) - lg(r - m) + lg(n - r) - lg(t - m) - lg(np.maximum(n - r - t + m, 0.0))
             - lg(n) + lg(t) + lg(n - t))
    return np.where(ok, np.exp(log_p), 0.0)


def literature_queries(labels: np.ndarray, per_class: int = 100, seed: int = 0) -> np.ndarray:
    """Indices of `per_class` items of each class (fewer where a class has fewer), drawn with `seed`:
    the usual 1,000-query set of the hashing literature (100 per class on 10-class data)."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def gini(counts: np.ndarray) -> np.ndarray:
    """Gini impurity 1 - sum_c p_c^2 of class counts (..., K); NaN for empty buckets."""
    counts = counts.astype(np.float64)
    n = counts.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, 1.0 - (counts ** 2).sum(axis=-1) / n ** 2, np.nan)


def weighted_gini(counts: np.ndarray) -> float:
    """Pooled Gini over buckets (M, K), each weighted by its size: the impurity a random item sees."""
    n = counts.sum(axis=-1)
    if n.sum() == 0:
        return float("nan")  # every bucket empty: no impurity to speak of
    return float(np.nansum(gini(counts) * n) / n.sum())


def index_buckets(packed: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """Buckets of identical codes in the index: count, occupancy and size-weighted Gini impurity."""
    _, inv, sizes = np.unique(packed, axis=0, return_inverse=True, return_counts=True)
    counts = np.zeros((len(sizes), n_classes), dtype=np.int64)
    np.add.at(counts, (inv.ravel(), labels), 1)
    return {"count": float(len(sizes)), "mean_occupancy": float(sizes.mean()),
            "max_occupancy": float(sizes.max()), "singleton_fraction": float((sizes == 1).mean()),
            "gini": weighted_gini(counts)}


def evaluate_hash(q_bits: np.ndarray, q_labels: np.ndarray, db_bits: np.ndarray, db_labels: np.ndarray,
                  k: int = 100, radius: int = 2, map_at: int = 1000) -> dict[str, float]:
    """mAP over the whole ranking, mAP@`map_at`, precision@k, and the Gini impurity / occupancy of the
    Hamming balls of radius 0 and `radius` around each query (pooled over queries), plus the index's
    own buckets of identical codes.
    """
    n_bits, n_classes = q_bits.shape[1], int(max(q_labels.max(), db_labels.max())) + 1
    q, db = pack_bits(q_bits), pack_bits(db_bits)
    hist = class_histograms(q, db, db_labels, n_bits, n_classes)  # (Q, K, B+1)
    tot = hist.sum(axis=1)  # (Q, B+1)
    rel = hist[np.arange(len(q)), q_labels]  # (Q, B+1)
    out = {"map": float(np.nanmean(expected_ap(rel, tot))),
           f"map_at_{map_at}": float(np.mean(np.concatenate([
               expected_ap_at(rel[s:s + 1000], tot[s:s + 1000], map_at) for s in range(0, len(q), 1000)]))),
           f"precision_at_{k}": float(expected_precision_at(rel, tot, k).mean())}
    for r in (0, radius):
        ball = hist[:, :, :r + 1].sum(axis=2)  # (Q, K) classes within radius r
        size = ball.sum(axis=1)
        out[f"gini_r{r}"] = weighted_gini(ball)
        out[f"empty_r{r}"] = float((size == 0).mean())  # queries whose lookup finds nothing
        out[f"occupancy_r{r}"] = float(size.mean())
    out.update({f"index_{k_}": v for k_, v in index_buckets(db, db_labels, n_classes).items()})
    return out


def knn(q_bits: np.ndarray, db_bits: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(distances (Q, k) int32, indices (Q, k) int64) of the k nearest index codes by Hamming distance,
    nearest first; equal distances in no particular order. The distances come from one float matrix
    product of +-1 codes, d = (B - q.x) / 2 (exact: integers far below 2^24), and torch's top-k, which
    run on every core: the fastest exhaustive ranking here (benchmarks/bench_hashing.py)."""
    import torch

    k = min(k, len(db_bits))
    n_bits = q_bits.shape[1]
    x = torch.from_numpy(np.asarray(db_bits, dtype=np.float32) * 2 - 1).T.contiguous()  # (B, N)
    dist, idx = [], []
    for s in range(0, len(q_bits), chunk):
        q = torch.from_numpy(np.asarray(q_bits[s:s + chunk], dtype=np.float32) * 2 - 1)
        top, i = (q @ x).topk(k, dim=1)  # the largest dot products are the smallest distances
        dist.append(((n_bits - top) / 2).round().to(torch.int32))
        idx.append(i)
    return torch.cat(dist).numpy(), torch.cat(idx).numpy()


def nearest(q_bits: np.ndarray, db_bits: np.ndarray, k: int) -> np.ndarray:
    """Indices (Q, k) of the k nearest index codes by Hamming distance (ties by index order)."""
    d = hamming(pack_bits(q_bits), pack_bits(db_bits))
    return np.argsort(d, axis=1, kind="stable")[:, :k]
