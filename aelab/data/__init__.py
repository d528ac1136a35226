"""aelab's data: load a named data set (or an npz / image folder) as uint8 arrays on the host.

    from aelab.data import load_dataset
    ds = load_dataset("fashion-mnist")            # looks locally, then the cache, then Debian's path
    ds = load_dataset("cifar10", download=True)   # fetched into ~/.cache/aelab, SHA-256 checked
    ds = load_dataset("npz:my.npz")               # x_train, y_train, x_test, y_test
    ds = load_dataset("folder:photos/")           # photos/<class>/*.png
    ds = load_dataset("npy:big/", mmap=True)       # x_train.npy, ... ; images stay on disk (stream.py)

`formats` parses and validates files, `sources` knows where they live; `device` and `augment`
(imported by their users, not here) put a loaded set on the training device.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .dataset import Dataset
from .sources import SOURCES, get_source, load_path, not_found

PATH_KINDS = ("npz", "folder", "npy")

__all__ = ["Dataset", "DataError", "dataset_names", "describe_datasets", "load_dataset"]


def dataset_names() -> list[str]:
    """The named data sets; besides these, `npz:PATH`, `folder:PATH` and `npy:FOLDER` load local files."""
    return list(SOURCES)


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False,
                 mmap: bool = False) -> Dataset:
    """The data set `name`, from data_dir, the cache or the system folder; else downloaded into
    the cache when `download` is true; else a DataError saying where it looked and how to get it.
    `mmap`: leave the images on disk (np.memmap) where the files allow (npy:, uncompressed IDX)."""
    kind, sep, path = name.partition(":")
    if sep and kind in PATH_KINDS:
        if not path:
            raise DataError(f"{name!r}: give a path after '{kind}:'")
        return load_path(kind, path, data_dir, mmap)
    source = get_source(name)
    found = source.find(data_dir)
    if found is None:
        if not download:
            raise not_found(source, data_dir)
        found = source.download()
    return source.load(found, mmap=mmap)


def describe_datasets(data_dir: str | Path | None = None) -> list[dict]:
    """One row per named data set for `aelab data`: name, description, available, found (where)
    and hint (the command that gets it, when not available). Only looks for files; loads nothing."""
    rows = []
    for source in SOURCES.values():
        found = source.find(data_dir)
        rows.append({"name": source.name, "description": source.description,
                     "available": found is not None, "found": str(found) if found else "",
                     "hint": "" if found else source.how_to_get()})
    return rows
