"""Atomic file writes (torch-free, so reports can use them): temp file in the same folder, flush,
fsync, rename. A crash leaves the old file or the new one, never half of one."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointError


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically; a failure (disk full, read-only) is a CheckpointError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}; the previous file is untouched") from None
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))
