"""Read the files a user hands to aelab (JSON documents, raw bytes), every problem one line naming the file.

The readers of each file kind (run configs, metrics, index metadata, study records, checkpoints) go
through these, so a file that is missing, a folder, a symlink loop, unreadable, cut short or not what
it should be is always the same kind of one-line error (`CheckpointError`, `DataError`, ...), never a
traceback. Torch-free: the report pages use them too.
"""
from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

from .errors import AelabError, CheckpointError

_MISSING = object()


def short(err: BaseException) -> str:
    """`Type: message` on one short line (a corrupt file can make a parser quote its bytes)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:160]}" if text else type(err).__name__


def read_bytes(path: str | Path, error: type[AelabError] = CheckpointError, default: Any = _MISSING) -> Any:
    """The bytes of `path`; `default` when it does not exist (if given), else `error` naming the problem."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if default is not _MISSING:
            return default
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder, not a file") from None
    except OSError as e:
        why = "a symlink loop" if e.errno == errno.ELOOP else (e.strerror or short(e))
        raise error(f"{path}: cannot read it ({why})") from None


def require_file(path: str | Path, error: type[AelabError] = CheckpointError, hint: str = "") -> Path:
    """`path` if it is a file (or a link to one), else `error` saying what is there instead."""
    path = Path(path)
    if path.is_file():
        return path
    what = ("is a folder, not a file" if path.is_dir() else "is a broken link or a symlink loop"
            if path.is_symlink() else "not found")
    raise error(f"{path} {what}{'; ' + hint if hint else ''}")


def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]] | None, int]:
    """The dict rows of a JSON-lines file (history.jsonl) and how many lines could not be read; None when
    there is no such file. A line cut short by a killed run, or any other bad line, is skipped and counted."""
    path = Path(path)
    if not path.is_file():
        return None, 0
    raw = read_bytes(path)
    rows, skipped = [], 0
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            skipped += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped += 1
    return rows, skipped


def read_json(path: str | Path, error: type[AelabError] = CheckpointError, default: Any = _MISSING,
              kind: type = dict) -> Any:
    """The JSON document in `path`, checked to be a `kind` (a dict unless told); `default` when the file
    does not exist (if given). A file cut short, binary, nested too deep or of another kind is `error`."""
    raw = read_bytes(path, error, default=_MISSING if default is _MISSING else None)
    if raw is None:
        return default
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise error(f"{path} is not valid JSON ({short(e)}); it was changed or cut short: restore it or "
                    "re-create it with aelab") from None
    return check_kind(doc, kind, str(path), error)


def check_kind(value: Any, kind: type | tuple[type, ...], where: str, error: type[AelabError] = CheckpointError) -> Any:
    """`value` if it is a `kind`, else `error` saying what was found (a bool is not an int here)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        want = " or ".join(_NAMES.get(k, k.__name__) for k in kinds)
        raise error(f"{where} must hold {want}, not {_NAMES.get(type(value), type(value).__name__)}")
    return value


_NAMES = {dict: "a JSON object", list: "a JSON list", str: "a string", int: "an integer", float: "a number",
          bool: "true/false", type(None): "null"}
