"""The study folder's `cells/`: one JSON file per finished cell (+ its arrays as safetensors), atomic.

A cell's JSON is written last and names its arrays file and that file's SHA-256, so a kill at any
moment leaves either no record or a whole one; a record that does not parse, names another key or
config, or whose arrays do not match their checksum is not trusted: the cell runs again. The arrays
file is named by its content's hash (`<key>.<sha16>.safetensors`), so two processes writing one cell
(which the study lock prevents, see runner.py) can never pair one's JSON with the other's arrays.
Each record also says which code computed it (commit, aelab version) and on which device. No pickle.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write, atomic_write_text


def split_arrays(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A cell's result -> (JSON-able values, arrays): tensors and ndarrays become stored arrays."""
    values, arrays = {}, {}
    for k, v in result.items():
        if hasattr(v, "detach"):  # a torch tensor
            v = v.detach().cpu().numpy()
        if isinstance(v, np.ndarray) and v.ndim > 0:
            arrays[k] = np.ascontiguousarray(v)
        elif isinstance(v, np.ndarray) or isinstance(v, np.generic):
            values[k] = v.item()
        else:
            values[k] = v
    return values, arrays


def _plain(v: Any) -> Any:
    if isinstance(v, (np.generic, np.ndarray)):
        return v.tolist()
    raise TypeError(f"a cell result holds a {type(v).__name__}; return numbers, strings, lists, dicts or arrays")


def dumps(doc: dict[str, Any]) -> str:
    """JSON whose floats read back bit for bit (repr), NaN and inf included."""
    return json.dumps(doc, indent=1, default=_plain, allow_nan=True)


PROVENANCE = ("git_commit", "aelab_version", "device")  # what computed a cell (`provenance`)


class CellStore:
    def __init__(self, folder: Path, config_sha: str):
        self.dir = Path(folder) / "cells"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_sha = config_sha

    def write(self, key: str, cell: dict, result: dict, meta: dict) -> dict[str, Any]:
        """Store a finished cell; returns its tidy row (what `load` would give back)."""
        values, arrays = split_arrays(result)
        clash = (set(values) | set(arrays)) & set(cell)
        if clash:
            raise ValueError(f"cell {key}: result keys {sorted(clash)} shadow the cell's own fields")
        doc = {"key": key, "cell": cell, "result": values, "config_sha": self.config_sha, **meta, "arrays": None}
        if arrays:
            from safetensors.numpy import save

            blob = save(arrays)
            sha = hashlib.sha256(blob).hexdigest()
            atomic_write(self.dir / f"{key}.{sha[:16]}.safetensors", blob)
            doc["arrays"] = {"file": f"{key}.{sha[:16]}.safetensors", "sha256": sha}
        atomic_write_text(self.dir / f"{key}.json", dumps(doc))
        (self.dir / f"{key}.failed.json").unlink(missing_ok=True)
        return json.loads(dumps({**cell, **values})) | arrays

    def fail(self, key: str, reason: str, seconds: float) -> None:
        atomic_write_text(self.dir / f"{key}.failed.json", dumps({"key": key, "error": reason, "seconds": seconds}))

    def load(self, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(tidy row, the record's meta) of a stored cell, or None when absent or not to be trusted."""
        try:
            doc = json.loads((self.dir / f"{key}.json").read_text())
            if doc["key"] != key or doc["config_sha"] != self.config_sha:
                return None
            row = {**doc["cell"], **doc["result"]}
            if doc["arrays"]:
                row |= self._arrays(doc["arrays"])
            seconds = doc.get("seconds", math.nan)
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None
        return row, {"seconds": seconds}

    def _arrays(self, ref: dict) -> dict[str, np.ndarray]:
        from safetensors.numpy import load

        blob = (self.dir / ref["file"]).read_bytes()
        if hashlib.sha256(blob).hexdigest() != ref["sha256"]:
            raise ValueError("arrays do not match their checksum")
        return load(blob)

    def failures(self) -> dict[str, dict[str, Any]]:
        out = {}
        for f in sorted(self.dir.glob("*.failed.json")):
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError, RecursionError):
                continue
            if isinstance(doc, dict) and isinstance(doc.get("key"), str) and isinstance(doc.get("error"), str):
                out[doc["key"]] = doc
        return out

    def provenance(self) -> dict[str, dict[str, str]]:
        """{key: its commit, aelab version and device} of every record of this config ("unknown" where a
        record predates them); read from the JSON alone (the arrays are not checked)."""
        out = {}
        for f in sorted(self.dir.glob("*.json")):
            try:
                doc = json.loads(f.read_text())
                if doc["config_sha"] == self.config_sha:
                    out[doc["key"]] = {k: str(doc.get(k, "unknown")) for k in PROVENANCE}
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

    def sweep(self) -> None:
        """Delete arrays files that no record names (left by a cell whose JSON was never written, or by
        an older result of a cell that ran again). Only while no cell is being written: under the lock."""
        named = set()
        for f in self.dir.glob("*.json"):
            try:
                named.add(json.loads(f.read_text())["arrays"]["file"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        for f in self.dir.glob("*.safetensors"):
            if f.name not in named:
                f.unlink(missing_ok=True)
