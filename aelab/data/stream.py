"""Data sets larger than memory: uint8 images memory-mapped on disk, streamed to the device in chunks.

    aelab data --export fashion-mnist fmnist-npy/           # once: four uncompressed .npy files
    aelab train data=npy:fmnist-npy data.stream=true         # images stay on disk, read chunk by chunk

    from aelab.data.stream import read_npy, stream_splits
    splits = stream_splits(read_npy("fmnist-npy/"), "cuda", val_fraction=0.1, chunk_rows=65536)
    fit(model, splits.train, cfg)                            # the engine takes it like DeviceData

Only uncompressed files can be mapped: `.npy` (an `.npz` member cannot; `save_npy` writes the four
arrays of a Dataset as `.npy`, and a set larger than memory can be written piece by piece with
`np.lib.format.open_memmap`) or IDX files with their `.gz` removed (`idx_memmap`).

How an epoch is ordered: the rows are cut into chunks of `chunk_rows` consecutive images. Each epoch
draws (from the engine's seeded generator, so it is reproducible and resumable) a random order of the
chunks and a random order of the rows inside each chunk. Every image is seen once per epoch; batches
are consecutive runs of that order, so a batch lies in one chunk (or, at a boundary, two). The chunk
in use is read with one sequential read and copied to the device once; a batch is then an index
slice of it, as with `DeviceData`. A batch that straddles two chunks takes its rows from each, read
alone in turn, so the process holds one chunk at a time, whatever the file's size.
This is a two-level shuffle, not a uniform permutation: rows stored sorted (by class, say) would give
batches of one kind, so store them in no particular order. `benchmarks/bench_memory.py` reports the
test error reached by both paths side by side.
Reads go through `np.fromfile` (not the map) so the process holds one chunk, not the page cache.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .dataset import Dataset
from .device import DeviceData, Splits, hide_labels, split_rows
from .formats import check_dataset, npz_images, npz_labels

NAMES = ("x_train", "y_train", "x_test", "y_test")
CLASSES = "classes.json"  # optional: the class names, index = label


def save_npy(ds: Dataset, folder: str | Path) -> Path:
    """Write a Dataset as four uncompressed .npy files (and its class names) that `read_npy` can map."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name in NAMES:
            np.save(folder / f"{name}.npy", np.ascontiguousarray(getattr(ds, name)))
        (folder / CLASSES).write_text(json.dumps(list(ds.classes)))
    except OSError as e:
        raise DataError(f"{folder}: cannot write the .npy files ({e.strerror}); choose a writable folder") from None
    return folder


def read_npy(folder: str | Path, mmap: bool = True) -> Dataset:
    """The four .npy files in `folder` as a Dataset; with `mmap` the images stay on disk (np.memmap)."""
    folder, arrays = Path(folder), {}
    for name in NAMES:
        where = folder / f"{name}.npy"
        try:  # labels are small: always read; images are mapped
            a = np.load(where, mmap_mode="r" if mmap and name[0] == "x" else None)
        except (OSError, ValueError) as e:
            raise DataError(f"{where}: cannot read it ({e}); a folder for npy: holds "
                            f"{', '.join(n + '.npy' for n in NAMES)} (`aelab data --export NAME FOLDER` writes one)") from None
        check = npz_labels if name[0] == "y" else _mapped_images if mmap else npz_images
        arrays[name] = check(a, str(where))
    classes = _class_names(folder, arrays["y_train"], arrays["y_test"])
    return check_dataset(Dataset(f"npy:{folder}", *(arrays[n] for n in NAMES), classes=classes, source=str(folder)))


def _mapped_images(x: np.ndarray, where: str) -> np.ndarray:
    """A mapped image array as (N, C, H, W) without reading it: only layouts that need no copy."""
    if x.dtype == np.uint8 and x.ndim == 3:
        return x[:, None]  # still a map of the same bytes
    if x.dtype == np.uint8 and x.ndim == 4 and x.shape[1] in (1, 3, 4) and x.flags.c_contiguous:
        return x
    raise DataError(f"{where}: to be memory-mapped, images must be uint8 N×H×W or N×C×H×W (channels first, "
                    f"C in 1, 3, 4), found {x.dtype} {x.shape}; convert them once, or leave data.stream=false")


def _class_names(folder: Path, *labels: np.ndarray) -> list[str]:
    if (folder / CLASSES).is_file():
        try:
            names = json.loads((folder / CLASSES).read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{folder / CLASSES}: not valid JSON ({e}); it should hold a list of class names") from None
        if isinstance(names, list) and names:
            return [str(n) for n in names]
        raise DataError(f"{folder / CLASSES}: should hold a non-empty list of class names")
    top = max((int(y.max()) for y in labels if y.size), default=-1)
    return [str(i) for i in range(top + 1)]


def idx_memmap(path: str | Path) -> np.memmap:
    """An uncompressed IDX image file (magic 2051) as a read-only (N, 1, H, W) uint8 map."""
    path = Path(path)
    try:
        head = np.fromfile(path, dtype=">u4", count=4)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if len(head) < 4 or head[0] != 2051:
        raise DataError(f"{path} is not an uncompressed IDX image file (gunzip it first to map it)")
    n, h, w = (int(v) for v in head[1:])
    if path.stat().st_size != 16 + n * h * w:
        raise DataError(f"{path}: header says {n} images of {h}x{w} but the file size differs")
    return np.memmap(path, dtype=np.uint8, mode="r", offset=16, shape=(n, 1, h, w))


class StreamData:
    """A split on disk: images (N, C, H, W) uint8 mapped read-only, labels on the device.

    Answers what the engine asks of `DeviceData`: `len`, `device`, `x.shape`, `permutation(gen)`,
    `batch(idx)`. `rows` (sorted file rows) makes it a part of the file, e.g. the training rows
    without the validation rows; positions 0..len-1 then index `rows`, as they index a subset."""

    def __init__(self, x: np.memmap, y: np.ndarray, device: torch.device | str = "cpu", chunk_rows: int = 65536,
                 rows: np.ndarray | None = None):
        if not isinstance(x, np.memmap) or x.dtype != np.uint8 or x.ndim != 4:
            raise DataError("StreamData needs a uint8 (N, C, H, W) numpy memmap")
        self.x, self.chunk_rows = x, max(1, int(chunk_rows))
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)  # 8 bytes a row
        if len(y) != len(self):
            raise DataError(f"StreamData: {len(y)} labels for {len(self)} rows")
        self.y = torch.tensor(np.array(y, dtype=np.int64), device=device)  # 8 bytes a row, in memory
        self.row_bytes = int(np.prod(x.shape[1:]))
        self._chunk_id, self._chunk = -1, None
        self._pinned, self._copied = None, None  # CUDA: the host buffer chunks are read into, its last copy

    def __len__(self) -> int:
        return self.x.shape[0] if self.rows is None else len(self.rows)

    @property
    def device(self) -> torch.device:
        return self.y.device

    def _read(self, start: int, stop: int) -> torch.Tensor:
        """File rows [start, stop) with one sequential read, on the device: (stop - start, C, H, W) uint8."""
        count, offset = (stop - start) * self.row_bytes, self.x.offset + start * self.row_bytes
        if self.device.type != "cuda":  # on the CPU the read is the tensor: no copy
            raw = np.fromfile(self.x.filename, dtype=np.uint8, count=count, offset=offset)
            return torch.from_numpy(raw.reshape(-1, *self.x.shape[1:]))
        host = self._host_buffer(count)
        with open(self.x.filename, "rb") as f:
            f.seek(offset)
            got = f.readinto(memoryview(host.numpy())[:count])  # read straight into page-locked memory
        if got != count:
            raise DataError(f"{self.x.filename}: read {got} of {count} bytes; the file changed or is truncated")
        out = host[:count].view(-1, *self.x.shape[1:]).to(self.device, non_blocking=True)  # a DMA, async
        self._copied = torch.cuda.Event()
        self._copied.record()  # the buffer is refilled only after this copy is done
        return out

    def _host_buffer(self, count: int) -> torch.Tensor:
        """A reused page-locked buffer of at least `count` bytes (a copy from pageable memory to the GPU
        goes through a staging buffer and blocks the host; from pinned memory it is one async DMA)."""
        if self._copied is not None:
            self._copied.synchronize()
        if self._pinned is None or self._pinned.numel() < count:
            self._pinned = None
            size = max(count, min(self.chunk_rows, self.x.shape[0]) * self.row_bytes)  # one chunk
            self._pinned = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        return self._pinned

    def _file_rows(self, pos: torch.Tensor) -> torch.Tensor:
        return pos if self.rows is None else torch.from_numpy(self.rows[pos.numpy()])

    def permutation(self, gen: torch.Generator) -> torch.Tensor:
        """This epoch's order of positions (len,) on the host: chunks in random order, rows shuffled within each."""
        seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))  # once an epoch
        rng, n, c = np.random.default_rng(seed), self.x.shape[0], self.chunk_rows
        starts = rng.permutation(np.arange(0, n, c))
        ends = np.minimum(starts + c, n)
        if self.rows is not None:  # the positions whose rows lie in each chunk
            starts, ends = np.searchsorted(self.rows, starts), np.searchsorted(self.rows, ends)
        return torch.from_numpy(np.concatenate([a + rng.permutation(b - a) for a, b in zip(starts, ends)]))

    def _chunk_at(self, k: int) -> torch.Tensor:
        """Chunk k on the device, read once when the order reaches it; the previous one is freed."""
        if k != self._chunk_id:
            self._chunk = None  # drop the old chunk before reading: one is held at a time
            stop = min((k + 1) * self.chunk_rows, self.x.shape[0])
            self._chunk, self._chunk_id = self._read(k * self.chunk_rows, stop), k
        return self._chunk

    def _gather(self, rows: torch.Tensor) -> torch.Tensor:
        """The file rows `rows` (host; in chunk-major order for speed) from the chunk(s) they lie in."""
        c = self.chunk_rows
        ids = rows // c
        last = int(ids[-1])
        if bool((ids == last).all()):
            return self._chunk_at(last)[(rows - last * c).to(self.device)]
        # Across a boundary: chunks next to each other in this epoch's order are far apart in the
        # file, so each is read alone (one span would read all the chunks between them). The chunk
        # the batch ends in is read last and stays: the next batches continue in it.
        x = torch.empty((len(rows), *self.x.shape[1:]), dtype=torch.uint8, device=self.device)
        for k in dict.fromkeys(ids.tolist()):
            part = torch.nonzero(ids == k).flatten()
            x[part.to(self.device)] = self._chunk_at(k)[(rows[part] - k * c).to(self.device)]
        return x

    def batch(self, idx: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        """Images as float in [0, 1] and labels at the positions `idx` (a host index tensor or a slice)."""
        if isinstance(idx, slice):
            start, stop, _ = idx.indices(len(self))
            x = self._read(start, stop) if self.rows is None else self._gather(torch.from_numpy(self.rows[start:stop]))
            y = self.y[start:stop]
        else:
            idx = idx.cpu()
            x, y = self._gather(self._file_rows(idx)), self.y[idx.to(self.device)]
        x = x.float().div_(255.0)
        return {"x": x, "x_in": x, "y": y}

    def subset(self, idx: torch.Tensor | np.ndarray) -> DeviceData:
        """The positions `idx` read into memory (for a few thousand images: figures, probes)."""
        idx = torch.as_tensor(idx).cpu()
        return DeviceData(self._gather(self._file_rows(idx)), self.y[idx.to(self.device)])

    def labelled(self) -> "StreamData":
        """Only the rows whose label is visible, still on disk."""
        keep = (self.y >= 0).cpu().numpy()
        rows = np.arange(len(self)) if self.rows is None else self.rows
        return StreamData(self.x, self.y.cpu().numpy()[keep], self.device, self.chunk_rows, rows[keep])


def stream_splits(ds: Dataset, device: torch.device | str = "cpu", val_fraction: float = 0.0, seed: int = 0,
                  labels_per_class: int = 0, label_fraction: float = 0.0, chunk_rows: int = 65536) -> Splits:
    """Like `to_device` (the same validation rows, the same hidden labels), with the images left on disk."""
    if not isinstance(ds.x_train, np.memmap) or not isinstance(ds.x_test, np.memmap):
        raise DataError(f"{ds.name}: data.stream=true needs images that can be memory-mapped: npy:FOLDER "
                        f"(`aelab data --export {ds.name} FOLDER` writes one) or uncompressed IDX files")
    tr, va = split_rows(len(ds.y_train), val_fraction, seed)
    y_tr = hide_labels(ds.y_train[tr], labels_per_class, label_fraction, seed)
    val = StreamData(ds.x_train, ds.y_train[va], device, chunk_rows, va) if len(va) else None
    return Splits(StreamData(ds.x_train, y_tr, device, chunk_rows, tr if len(va) else None), val,
                  StreamData(ds.x_test, ds.y_test, device, chunk_rows))


def open_npy(folder: str | Path, device: torch.device | str = "cpu", chunk_rows: int = 65536) -> Splits:
    """The .npy files of `save_npy` as streamed train and test splits (no validation split)."""
    return stream_splits(read_npy(folder), device, chunk_rows=chunk_rows)
