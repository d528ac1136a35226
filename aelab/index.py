"""A searchable index of a hashing model's binary codes, on faiss's binary indexes.

`build_index(RUN, data)` hashes the data set's training images with the run's model (any registered
hashing autoencoder: `semhash`, `hash-ste`, `hash-bihalf`, `hash-sgh`) and writes a folder:

    index.json   model, bits, data set, run, and each row's label (row i = training image i)
    flat.faiss   faiss IndexBinaryFlat: exhaustive Hamming k-nearest search (popcount over all codes)
    mih.faiss    faiss IndexBinaryMultiHash: multi-index hashing, for Hamming-radius lookups

`query_index(INDEX, source, k)` hashes query images (a PNG/JPEG, or an .npz of images or of codes)
and returns each one's k nearest rows with distances; `aelab query` prints them and draws a figure.
The evaluation's tie-fair mAP stays in `aelab.retrieval`; this is the serving side.

    aelab index runs/hash-bihalf-fashion-mnist data=fashion-mnist
    aelab query runs/hash-bihalf-fashion-mnist/index shirt.png k=10
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write, atomic_write_text
from .data import load_dataset
from .data.formats import IMAGE_SUFFIXES, npz_images, read_image, read_npz_arrays
from .errors import CheckpointError, ConfigError, DataError
from .models.hashing import SemanticHashAE
from .readers import check_kind, read_bytes, read_json, short

INDEX_VERSION = 2  # 2: index.json holds each faiss file's SHA-256
QUERY_SUFFIXES = (*sorted(IMAGE_SUFFIXES), ".npz")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError("aelab index/query need faiss: pip install 'aelab[index]' (faiss-cpu)") from None
    return faiss


def to_faiss_codes(bits: np.ndarray) -> np.ndarray:
    """bool (N, B) -> uint8 (N, ceil(B/8)) as faiss packs binary codes (bit j of byte i = bit 8i+j);
    zero padding to whole bytes adds no Hamming distance."""
    bits = np.asarray(bits, dtype=bool)
    pad = -bits.shape[1] % 8
    return np.packbits(np.pad(bits, ((0, 0), (0, pad))), axis=1, bitorder="little")


def hash_images(model: SemanticHashAE, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """uint8 or float images (N, C, H, W) -> bool bits (N, B) from the model's `hash_bits`."""
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    out = [model.hash_bits(torch.from_numpy(np.array(x[s:s + batch])).float().div(scale)).cpu().numpy()
           for s in range(0, len(x), batch)]
    return np.concatenate(out)


def load_hash_model(run_dir: str | Path) -> SemanticHashAE:
    """The model of a finished run, checked to be a hashing autoencoder."""
    from .runs import load_run

    path = Path(run_dir)
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a finished run (no model.safetensors / config.json); "
                              "train one with `aelab train model=hash-bihalf ...`")
    model = load_run(path).model
    if not isinstance(model, SemanticHashAE):
        raise ConfigError(f"{path} holds a '{model.name}' model, not a hashing model; index a run of "
                          "semhash, hash-ste, hash-bihalf or hash-sgh")
    return model


def _multi_hash(faiss, n_bits: int):
    """Multi-index hashing over byte-aligned codes: tables of 8 or 16 bits each."""
    d = 8 * -(-n_bits // 8)
    b = 16 if d % 16 == 0 and d >= 32 else 8
    index = faiss.IndexBinaryMultiHash(d, d // b, b)
    index.nflip = 2  # probe every bucket within 2 bits in each table (`within_radius` sets it per radius)
    return index


def build_index(run_dir: str | Path, data: str, out: str | Path | None = None,
                data_dir: str | None = None) -> Path:
    """Hash `data`'s training images with the run's model; write the index folder (default RUN/index)."""
    _faiss()  # before any work: the extra is missing
    model = load_hash_model(run_dir)
    ds = load_dataset(data, data_dir)
    if tuple(ds.shape) != tuple(model.input_shape):
        raise DataError(f"{data} has images of shape {tuple(ds.shape)}, the model takes "
                        f"{tuple(model.input_shape)}; index the data set the run was trained on")
    bits = hash_images(model, ds.x_train)
    meta = {"model": model.name, "data": data, "data_dir": data_dir or "", "run": str(Path(run_dir).resolve()),
            "split": "train", "classes": list(ds.classes), "labels": ds.y_train.astype(int).tolist()}
    return write_index(Path(out) if out else Path(run_dir) / "index", bits, meta)


def write_index(out: Path, bits: np.ndarray, meta: dict) -> Path:
    """The index folder of codes `bits` (N, B) bool: both faiss files, then index.json (`meta` plus the
    sizes and the files' checksums) last, so a folder with an index.json is whole."""
    faiss, codes = _faiss(), to_faiss_codes(bits)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, index in (("flat", faiss.IndexBinaryFlat(8 * codes.shape[1])), ("mih", _multi_hash(faiss, bits.shape[1]))):
        index.add(codes)
        blob = faiss.serialize_index_binary(index).tobytes()
        atomic_write(out / f"{name}.faiss", blob)
        files[f"{name}.faiss"] = hashlib.sha256(blob).hexdigest()
    meta = {"version": INDEX_VERSION, **meta, "bits": int(bits.shape[1]), "rows": int(len(bits)), "files": files,
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_text(out / "index.json", json.dumps(meta))
    return out


@dataclass
class Hits:
    """The answer to a query: per query image, its nearest rows, distances and labels (Q, k)."""

    rows: np.ndarray
    distances: np.ndarray
    labels: np.ndarray
    bits: np.ndarray  # the queries' codes (Q, B)
    queries: np.ndarray | None  # the query images (Q, C, H, W) uint8 when given as images
    meta: dict


def _faiss_file(path: Path, name: str, meta: dict):
    """One of the index's faiss files, checked against index.json's checksum before faiss parses it
    (faiss trusts the sizes in a file: a changed one could make it allocate without bound)."""
    raw = read_bytes(path / name, DataError)
    if hashlib.sha256(raw).hexdigest() != meta["files"].get(name):
        raise DataError(f"{path / name} does not match the checksum in index.json (changed or cut short); "
                        "rebuild the index with `aelab index`")
    try:
        index = _faiss().deserialize_index_binary(np.frombuffer(raw, dtype=np.uint8))
    except RuntimeError as e:  # faiss's own errors on a file it cannot parse
        raise DataError(f"{path / name}: not a faiss binary index ({short(e)}); "
                        "rebuild it with `aelab index`") from None
    if index.d != 8 * -(-meta["bits"] // 8) or index.ntotal != meta["rows"]:
        raise DataError(f"{path / name} holds {index.ntotal} codes of {index.d} bits but index.json says "
                        f"{meta['rows']} of {meta['bits']}; rebuild it with `aelab index`")
    return index


def read_meta(index_dir: str | Path) -> dict:
    """index.json of an index folder, checked field by field (every later step trusts it)."""
    path = Path(index_dir)
    if not (path / "index.json").exists() and not (path / "flat.faiss").exists():
        raise DataError(f"{path}: not an index folder (no index.json / flat.faiss); build one with `aelab index RUN`")
    meta = read_json(path / "index.json", DataError)
    where = f"{path / 'index.json'}"
    if meta.get("version") != INDEX_VERSION:
        raise DataError(f"{where}: an index of version {meta.get('version')!r}, this aelab reads version "
                        f"{INDEX_VERSION}; rebuild it with `aelab index RUN data=...`")
    for key, kind in (("bits", int), ("rows", int), ("run", str), ("data", str), ("model", str),
                      ("labels", list), ("classes", list), ("files", dict)):
        check_kind(meta.get(key), kind, f"{where}[{key}]", DataError)
    check_kind(meta.get("data_dir", ""), str, f"{where}[data_dir]", DataError)
    labels = meta["labels"]
    if meta["bits"] <= 0 or meta["rows"] <= 0 or len(labels) != meta["rows"] or \
            not all(isinstance(y, int) and not isinstance(y, bool) and y >= 0 for y in labels):
        raise DataError(f"{where}: needs bits > 0, rows > 0 and one label (an integer >= 0) per row; it was "
                        "changed: rebuild it with `aelab index`")
    return meta


def read_index(index_dir: str | Path):
    """(meta, flat index) of an index folder, checked for consistency."""
    meta = read_meta(index_dir)
    return meta, _faiss_file(Path(index_dir), "flat.faiss", meta)


def read_queries(source: str | Path, shape: tuple[int, int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(images uint8 (Q, C, H, W) or None, codes bool (Q, B) or None) from an image file or an .npz
    holding `x` (images, (Q, C, H, W), (Q, H, W, C) or (Q, H, W)) or `codes` (bits as 0/1 or -1/+1, (Q, B))."""
    path = Path(source)
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{path}: no such query file; give an image ({', '.join(QUERY_SUFFIXES)}) or an .npz")
    c, h, w = shape
    if path.suffix.lower() in IMAGE_SUFFIXES:
        x = read_image(path, gray=c == 1, size=(w, h), wanted="the index's model takes")
        return x.reshape(h, w, c).transpose(2, 0, 1)[None], None
    if path.suffix.lower() != ".npz":
        raise DataError(f"{path}: give an image ({', '.join(QUERY_SUFFIXES)}) or an .npz with `x` or `codes`")
    arrays = read_npz_arrays(path, ("codes", "x"))
    if "codes" in arrays:
        return None, code_bits(arrays["codes"], f"{path}[codes]")
    if "x" not in arrays:
        raise DataError(f"{path}: the .npz needs an array `x` (images) or `codes` (bits); it has neither")
    x = npz_images(arrays["x"], f"{path}[x]") if arrays["x"].ndim in (3, 4) else arrays["x"]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape) or not len(x):
        raise DataError(f"{path}: `x` has shape {tuple(arrays['x'].shape)}, the index's model takes "
                        f"(N, {c}, {h}, {w}) with N >= 1")
    return x, None


def code_bits(codes: np.ndarray, where: str) -> np.ndarray:
    """bool (Q, B) from codes given as bits {0, 1} (or bool) or signs {-1, +1}; (B,) is one query.
    Anything else is refused: reading 0.3 or -1 as a bit would silently answer another question."""
    codes = codes[None] if codes.ndim == 1 else codes
    if codes.ndim != 2 or not codes.size or codes.dtype.kind not in "biuf":
        raise DataError(f"{where}: codes must be a (queries, bits) array of 0/1 or -1/+1, found "
                        f"{codes.dtype} of shape {codes.shape}")
    values = set(np.unique(codes).tolist())
    if values <= {0, 1} or values <= {-1, 1}:
        return codes > 0
    shown = ", ".join(map(str, sorted(values, key=str)[:4]))
    raise DataError(f"{where}: codes must be all 0/1 or all -1/+1, found the values {shown}"
                    f"{' ...' if len(values) > 4 else ''}")


def query_index(index_dir: str | Path, source: str | Path, k: int = 10) -> Hits:
    """The k nearest index rows (Hamming distance, exhaustive faiss search) of each query."""
    if k <= 0:
        raise ConfigError("k must be > 0")
    meta, flat = read_index(index_dir)
    try:
        model = load_hash_model(meta["run"])
    except (CheckpointError, ConfigError) as e:  # the run moved, or index.json was changed
        raise CheckpointError(f"{Path(index_dir) / 'index.json'} names the run {meta['run']!r}: {e}") from None
    x, bits = read_queries(source, model.input_shape)
    if bits is None:
        bits = hash_images(model, x)
    if bits.shape[1] != meta["bits"]:
        raise ConfigError(f"the queries are {bits.shape[1]}-bit codes but {index_dir} holds {meta['bits']}-bit "
                          "codes; query with codes of the index's model (or build the index of this model)")
    dist, rows = flat.search(to_faiss_codes(bits), min(k, meta["rows"]))
    labels = np.asarray(meta["labels"])[rows]
    return Hits(rows, dist, labels, bits, x, meta)


def within_radius(index_dir: str | Path, bits: np.ndarray, radius: int) -> list[np.ndarray]:
    """Rows within Hamming `radius` of each code, exactly. Multi-index hashing splits a code into
    `nhash` tables: a code within R differs from the query in at most R // nhash bits of some table
    (pigeonhole), so probing every bucket within that many flips finds all of them. Where that probes
    more buckets than there are rows, the exhaustive scan of the flat index is cheaper."""
    if radius < 0:
        raise ConfigError("radius must be >= 0")
    path = Path(index_dir)
    meta = read_meta(path)
    queries = to_faiss_codes(bits)
    mih = _faiss_file(path, "mih.faiss", meta)
    nflip = radius // mih.nhash
    probes = mih.nhash * sum(math.comb(mih.b, i) for i in range(min(nflip, mih.b) + 1))
    if nflip < mih.b and probes < meta["rows"]:
        mih.nflip = nflip
        lims, _, rows = mih.range_search(queries, radius + 1)  # faiss: distance < radius + 1
    else:
        lims, _, rows = _faiss_file(path, "flat.faiss", meta).range_search(queries, radius + 1)
    return [rows[lims[i]:lims[i + 1]] for i in range(len(bits))]


def hits_figure(hits: Hits, out: str | Path) -> Path:
    """Each query image (when given as an image) then its nearest index images, one row per query."""
    from .report import plots

    try:
        ds = load_dataset(hits.meta["data"], hits.meta.get("data_dir") or None)
    except (ConfigError, DataError) as e:
        raise DataError(f"the data set that index.json names, {hits.meta['data']!r}, cannot be loaded: {e}") from None
    rows = []
    for i in range(len(hits.rows)):
        q = [] if hits.queries is None else [hits.queries[i:i + 1]]
        rows.append(np.concatenate(q + [ds.x_train[hits.rows[i]]]))
    grid = np.concatenate(rows).astype(np.float32) / 255.0
    ncol = hits.rows.shape[1] + (hits.queries is not None)
    title = f"query, then its {hits.rows.shape[1]} nearest ({hits.meta['bits']}-bit {hits.meta['model']})"
    return plots.save(plots.image_grid(grid, nrow=ncol, title=title), out)
