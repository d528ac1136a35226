"""Data sets larger than memory: uint8 images memory-mapped on disk, streamed to the device in chunks.

    from aelab.data.stream import save_npy, open_npy
    save_npy(load_dataset("fashion-mnist"), "fmnist-npy/")       # once: uncompressed .npy files
    splits = open_npy("fmnist-npy/", device="cuda", chunk_rows=65536)
    fit(model, splits.train, cfg)                                 # the engine takes it like DeviceData

Only uncompressed files can be mapped: `.npy` (an `.npz` member cannot; `save_npy` writes the four
arrays of a Dataset as `.npy`) or IDX files with their `.gz` removed (`idx_memmap`).

How an epoch is ordered: the rows are cut into chunks of `chunk_rows` consecutive images. Each epoch
draws (from the engine's seeded generator, so it is reproducible and resumable) a random order of the
chunks and a random order of the rows inside each chunk. Every image is seen once per epoch; batches
are consecutive runs of that order, so a batch lies in one chunk (or, at a boundary, two). The chunk
in use is read with one sequential read and copied to the device once; a batch is then an index
slice of it, as with `DeviceData`. A batch that straddles two chunks is gathered from the map.
This is a two-level shuffle, not a uniform permutation: with chunks of >= 64k images it does not
measurably change training (images of one chunk are still in random order and chunks are mixed).
Reads go through `np.fromfile` (not the map) so the process holds one chunk, not the page cache.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .dataset import Dataset
from .device import Splits

NAMES = ("x_train", "y_train", "x_test", "y_test")


def save_npy(ds: Dataset, folder: str | Path) -> Path:
    """Write a Dataset as four uncompressed .npy files that `open_npy` can map."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        np.save(folder / f"{name}.npy", np.ascontiguousarray(getattr(ds, name)))
    return folder


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
    """A split on disk: images (N, C, H, W) uint8 mapped read-only, labels (N,) on the device.

    Answers what the engine asks of `DeviceData`: `len`, `device`, `permutation(gen)`, `batch(idx)`."""

    def __init__(self, x: np.memmap, y: np.ndarray, device: torch.device | str = "cpu", chunk_rows: int = 65536):
        if not isinstance(x, np.memmap) or x.dtype != np.uint8 or x.ndim != 4:
            raise DataError("StreamData needs a uint8 (N, C, H, W) numpy memmap")
        self.x, self.chunk_rows = x, max(1, int(chunk_rows))
        self.y = torch.tensor(np.array(y, dtype=np.int64), device=device)  # 8 bytes a row, in memory
        self.row_bytes = int(np.prod(x.shape[1:]))
        self._chunk_id, self._chunk = -1, None

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.y.device

    def _read(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) with one sequential read, on the device: (stop - start, C, H, W) uint8."""
        raw = np.fromfile(self.x.filename, dtype=np.uint8, count=(stop - start) * self.row_bytes,
                          offset=self.x.offset + start * self.row_bytes)
        return torch.from_numpy(raw.reshape(-1, *self.x.shape[1:])).to(self.device, non_blocking=True)

    def permutation(self, gen: torch.Generator) -> torch.Tensor:
        """This epoch's order (N,) on the host: chunks in random order, rows shuffled within each."""
        seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))  # once an epoch
        rng, c = np.random.default_rng(seed), self.chunk_rows
        starts = rng.permutation(np.arange(0, len(self), c))
        return torch.from_numpy(np.concatenate([s + rng.permutation(min(c, len(self) - s)) for s in starts]))

    def batch(self, idx: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        """Images as float in [0, 1] and labels for the rows `idx` (a host index tensor or a slice)."""
        if isinstance(idx, slice):
            start, stop, _ = idx.indices(len(self))
            x = self._read(start, stop)
            y = self.y[start:stop]
        else:
            idx = idx.cpu()
            chunk = int(idx[0]) // self.chunk_rows
            local = idx - chunk * self.chunk_rows
            if bool(((local >= 0) & (local < self.chunk_rows)).all()):
                if chunk != self._chunk_id:  # the next chunk: one read, one copy to the device
                    stop = min((chunk + 1) * self.chunk_rows, len(self))
                    self._chunk_id, self._chunk = chunk, self._read(chunk * self.chunk_rows, stop)
                x = self._chunk[local.to(self.device)]
            else:  # across a chunk boundary: one read of the rows it spans (<= 2 chunks, freed after);
                # never through the map, whose touched pages would stay resident in this process
                lo, hi = int(idx.min()), int(idx.max()) + 1
                x = self._read(lo, hi)[(idx - lo).to(self.device)]
            y = self.y[idx.to(self.device)]
        x = x.float().div_(255.0)
        return {"x": x, "x_in": x, "y": y}


def open_npy(folder: str | Path, device: torch.device | str = "cpu", chunk_rows: int = 65536) -> Splits:
    """The .npy files of `save_npy` as streamed train and test splits (no validation split)."""
    folder = Path(folder)
    try:
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in NAMES}
    except (OSError, ValueError) as e:
        raise DataError(f"{folder}: cannot map its .npy files ({e})") from None
    for part in ("train", "test"):
        if len(arrays[f"x_{part}"]) != len(arrays[f"y_{part}"]):
            raise DataError(f"{folder}: x_{part}.npy and y_{part}.npy hold different numbers of rows")
    return Splits(StreamData(arrays["x_train"], arrays["y_train"], device, chunk_rows), None,
                  StreamData(arrays["x_test"], arrays["y_test"], device, chunk_rows))
