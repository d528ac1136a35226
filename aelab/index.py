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

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write, atomic_write_text
from .data import load_dataset
from .errors import CheckpointError, ConfigError, DataError
from .models.hashing import SemanticHashAE

INDEX_VERSION = 1


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
    index.nflip = 2  # probe every bucket within 2 bits in each table
    return index


def build_index(run_dir: str | Path, data: str, out: str | Path | None = None,
                data_dir: str | None = None) -> Path:
    """Hash `data`'s training images with the run's model; write the index folder (default RUN/index)."""
    faiss = _faiss()
    model = load_hash_model(run_dir)
    ds = load_dataset(data, data_dir)
    if tuple(ds.shape) != tuple(model.input_shape):
        raise DataError(f"{data} has images of shape {tuple(ds.shape)}, the model takes "
                        f"{tuple(model.input_shape)}; index the data set the run was trained on")
    bits = hash_images(model, ds.x_train)
    codes = to_faiss_codes(bits)
    out = Path(out) if out else Path(run_dir) / "index"
    out.mkdir(parents=True, exist_ok=True)
    for name, index in (("flat", faiss.IndexBinaryFlat(8 * codes.shape[1])), ("mih", _multi_hash(faiss, bits.shape[1]))):
        index.add(codes)
        atomic_write(out / f"{name}.faiss", faiss.serialize_index_binary(index).tobytes())
    meta = {"version": INDEX_VERSION, "model": model.name, "bits": int(bits.shape[1]), "data": data,
            "data_dir": data_dir or "", "run": str(Path(run_dir).resolve()), "rows": int(len(bits)),
            "split": "train", "classes": list(ds.classes), "labels": ds.y_train.astype(int).tolist(),
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


def read_index(index_dir: str | Path):
    """(meta, flat index) of an index folder, checked for consistency."""
    faiss, path = _faiss(), Path(index_dir)
    if not (path / "index.json").is_file() or not (path / "flat.faiss").is_file():
        raise DataError(f"{path}: not an index folder (no index.json / flat.faiss); build one with `aelab index RUN`")
    meta = json.loads((path / "index.json").read_text())
    flat = faiss.deserialize_index_binary(np.frombuffer((path / "flat.faiss").read_bytes(), dtype=np.uint8))
    if flat.d != 8 * -(-meta["bits"] // 8) or flat.ntotal != meta["rows"]:
        raise DataError(f"{path}: flat.faiss holds {flat.ntotal} codes of {flat.d} bits but index.json says "
                        f"{meta['rows']} of {meta['bits']}; rebuild it with `aelab index`")
    return meta, flat


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def read_queries(source: str | Path, shape: tuple[int, int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(images uint8 (Q, C, H, W) or None, codes bool (Q, B) or None) from an image file or an .npz
    holding `x` (images, (Q, C, H, W) or (Q, H, W)) or `codes` (bits, (Q, B))."""
    from PIL import Image

    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: no such query file; give an image ({', '.join(IMAGE_SUFFIXES)}) or an .npz")
    c, h, w = shape
    if path.suffix.lower() in IMAGE_SUFFIXES:
        img = Image.open(path).convert("L" if c == 1 else "RGB")
        if img.size != (w, h):
            raise DataError(f"{path}: the query image is {img.size[0]}x{img.size[1]} pixels, the index's "
                            f"model takes {w}x{h}; resize it first")
        x = np.asarray(img, dtype=np.uint8).reshape(h, w, c).transpose(2, 0, 1)[None]
        return x, None
    if path.suffix.lower() != ".npz":
        raise DataError(f"{path}: give an image ({', '.join(IMAGE_SUFFIXES)}) or an .npz with `x` or `codes`")
    with np.load(path, allow_pickle=False) as f:  # never a pickle
        if "codes" in f:
            return None, np.asarray(f["codes"]).astype(bool).reshape(len(f["codes"]), -1)
        if "x" not in f:
            raise DataError(f"{path}: the .npz needs an array `x` (images) or `codes` (bits); it has {list(f)}")
        x = np.asarray(f["x"])
    x = x[:, None] if x.ndim == 3 and c == 1 else x
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
        raise DataError(f"{path}: `x` has shape {tuple(x.shape)}, the index's model takes (N, {c}, {h}, {w})")
    if x.dtype != np.uint8:
        x = np.clip(np.asarray(x, dtype=np.float64) * (255.0 if x.max() <= 1 else 1.0), 0, 255).round().astype(np.uint8)
    return x, None


def query_index(index_dir: str | Path, source: str | Path, k: int = 10) -> Hits:
    """The k nearest index rows (Hamming distance, exhaustive faiss search) of each query."""
    if k <= 0:
        raise ConfigError("k must be > 0")
    meta, flat = read_index(index_dir)
    model = load_hash_model(meta["run"])
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
    """Rows within Hamming `radius` of each code, by the multi-index-hashing index (no full scan)."""
    faiss, path = _faiss(), Path(index_dir)
    mih = faiss.deserialize_index_binary(np.frombuffer((path / "mih.faiss").read_bytes(), dtype=np.uint8))
    lims, _, rows = mih.range_search(to_faiss_codes(bits), radius + 1)  # faiss: distance < radius + 1
    return [rows[lims[i]:lims[i + 1]] for i in range(len(bits))]


def hits_figure(hits: Hits, out: str | Path) -> Path:
    """Each query image (when given as an image) then its nearest index images, one row per query."""
    from .report import plots

    ds = load_dataset(hits.meta["data"], hits.meta.get("data_dir") or None)
    rows = []
    for i in range(len(hits.rows)):
        q = [] if hits.queries is None else [hits.queries[i:i + 1]]
        rows.append(np.concatenate(q + [ds.x_train[hits.rows[i]]]))
    grid = np.concatenate(rows).astype(np.float32) / 255.0
    ncol = hits.rows.shape[1] + (hits.queries is not None)
    title = f"query, then its {hits.rows.shape[1]} nearest ({hits.meta['bits']}-bit {hits.meta['model']})"
    return plots.save(plots.image_grid(grid, nrow=ncol, title=title), out)
