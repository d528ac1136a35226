"""Parse and validate the file formats aelab reads, returning numpy arrays.

IDX (MNIST, Fashion-MNIST; gzipped or not), CIFAR-10 python batches (pickles, read with an unpickler
that can build numpy arrays and nothing else), npz archives and folders of images (one subfolder per
class). Every problem is a `DataError` that names the file; `check_dataset` is the one check that every
reader's result goes through. No Python loop touches single images, except Pillow once per file.
"""
from __future__ import annotations

import gzip
import io
import math
import pickle
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .dataset import Dataset

GZIP_MAGIC = b"\x1f\x8b"
IDX_IMAGES = 0x00000803  # unsigned bytes, 3 dims (N, H, W)
IDX_LABELS = 0x00000801  # unsigned bytes, 1 dim (N,)
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_FILES = (*CIFAR_BATCHES, "test_batch", "batches.meta")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}  # read as one channel; everything else as RGB


def _short(err: BaseException) -> str:
    """`Type: message`, cut to one short line (a corrupt file can make a library print its bytes)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:160]}" if text else type(err).__name__


def _describe(obj: object) -> str:
    if obj is None:
        return "nothing"
    if isinstance(obj, np.ndarray):
        return f"a {obj.dtype} array of shape {obj.shape}"
    return f"a {type(obj).__name__}"


# --- bytes and IDX -------------------------------------------------------------------------------


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic (whatever the file's name)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({_short(e)})") from None
    return gunzip(raw, path)


def gunzip(raw: bytes, where: object) -> bytes:
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"{where}: truncated or corrupt gzip data ({_short(e)}); "
                        "delete the file and get it again") from None


def parse_idx(raw: bytes, where: object, magic: int) -> np.ndarray:
    """The uint8 array in an IDX file: (N,) for labels (magic 0x801), (N, H, W) for images (0x803)."""
    kind = "images" if magic == IDX_IMAGES else "labels"
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = f"0x{raw[:4].hex()}" if raw else "an empty file"
        raise DataError(f"{where}: not an IDX {kind} file (magic number {found}, expected "
                        f"0x{magic:08x}); check that the file is the {kind} file and not corrupt")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{where}: IDX header truncated ({len(raw)} bytes); get the file again")
    dims = [int(d) for d in np.frombuffer(raw, ">u4", ndim, 4)]
    expected = header + math.prod(dims)
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{where}: IDX file {what}: header says {tuple(dims)}, i.e. {expected} "
                        f"bytes, but it has {len(raw)}; get the file again")
    # A copy: frombuffer over `bytes` is read-only, which torch.from_numpy warns about.
    return np.frombuffer(raw, np.uint8, expected - header, header).reshape(dims).copy()


def read_idx_images(path: Path) -> np.ndarray:
    """uint8 (N, 1, H, W) from an IDX images file (gzipped or not)."""
    return parse_idx(read_bytes(path), path, IDX_IMAGES)[:, None]


def read_idx_labels(path: Path) -> np.ndarray:
    """int64 (N,) from an IDX labels file (gzipped or not)."""
    return parse_idx(read_bytes(path), path, IDX_LABELS).astype(np.int64)


# --- CIFAR-10 python batches ---------------------------------------------------------------------


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# Everything the real batches name: they were pickled by Python 2 with numpy 1.x ("numpy.core");
# numpy 2 pickles say "numpy._core". Both map to the same function, imported without the
# deprecated alias.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes, numbers and numpy arrays, and refuses any other global.

    A pickle can call any importable function while it loads (os.system, ...); the CIFAR batches
    are pickles, so a planted file would run code under a plain `pickle.load`.
    """

    def __init__(self, raw: bytes, where: object):
        super().__init__(io.BytesIO(raw), encoding="bytes")  # Python 2 str -> bytes, as the keys are
        self.where = where

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(f"{self.where}: refusing to unpickle {module}.{name}: a CIFAR-10 batch "
                            "holds only numpy arrays; the file is not genuine, get it again") from None


def unpickle_dict(raw: bytes, where: object) -> dict:
    try:
        obj = _ArraysOnlyUnpickler(raw, where).load()
    except DataError:
        raise
    except Exception as e:  # corrupt pickles raise nearly anything: EOFError, ValueError, MemoryError...
        raise DataError(f"{where}: not a valid CIFAR-10 pickle ({_short(e)}); get it again") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: a CIFAR-10 batch is a pickled dict, found {_describe(obj)}")
    return obj


def _int_labels(labels: object, where: object, num_classes: int) -> np.ndarray:
    if isinstance(labels, (list, np.ndarray)) and len(labels) == 0:
        return np.zeros(0, np.int64)  # an empty set; check_dataset names the problem
    try:
        y = np.asarray(labels) if isinstance(labels, (list, np.ndarray)) else None
    except (ValueError, TypeError, OverflowError):
        y = None
    if y is None or y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{where}: b'labels' must be a list of integers, found {_describe(labels)}")
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"{where}: labels must be in [0, {num_classes}), found {y.min()}..{y.max()}")
    return y.astype(np.int64)


def parse_cifar_batch(raw: bytes, where: object) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, 32, 32) images and int64 (N,) labels from one pickled CIFAR-10 batch."""
    batch = unpickle_dict(raw, where)
    data = batch.get(b"data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
        raise DataError(f"{where}: b'data' must be a uint8 array of shape (N, 3072), "
                        f"found {_describe(data)}")
    labels = _int_labels(batch.get(b"labels"), where, 10)
    if len(labels) != len(data):
        raise DataError(f"{where}: {len(data)} images but {len(labels)} labels")
    # Each row holds the red, green and blue 32x32 planes in turn: channels-first already.
    return np.ascontiguousarray(data).reshape(-1, 3, 32, 32), labels


def parse_cifar_meta(raw: bytes, where: object) -> list[str]:
    """The class names in `batches.meta`."""
    names = unpickle_dict(raw, where).get(b"label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, bytes) for n in names):
        raise DataError(f"{where}: b'label_names' must be a list of names, found {_describe(names)}")
    try:
        return [n.decode() for n in names]
    except UnicodeDecodeError:
        raise DataError(f"{where}: class names are not UTF-8 text; get the file again") from None


def read_cifar_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    """x_train, y_train, x_test, y_test and class names from a `cifar-10-batches-py` folder."""
    folder = Path(folder)
    parts = [parse_cifar_batch(read_bytes(folder / name), folder / name) for name in CIFAR_BATCHES]
    x_test, y_test = parse_cifar_batch(read_bytes(folder / "test_batch"), folder / "test_batch")
    classes = parse_cifar_meta(read_bytes(folder / "batches.meta"), folder / "batches.meta")
    x_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    return x_train, y_train, x_test, y_test, classes


# --- npz -----------------------------------------------------------------------------------------


def read_npz_arrays(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays named `keys` (all when None) that an npz archive holds, read with allow_pickle=False
    so that the file cannot run code; anything unreadable is a DataError naming the file."""
    try:
        with open(path, "rb") as f:  # ours to close, whatever numpy raises half way
            npz = np.load(f, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: a single .npy array, not an npz archive; save with np.savez")
            with npz:
                return {k: npz[k] for k in npz.files if keys is None or k in keys}
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # numpy's zip and npy readers raise a zoo on corrupt bytes
        hint = ("it holds object arrays, which need pickle; save plain numeric arrays"
                if "Object arrays" in str(e) else "not a readable npz archive (np.savez)")
        raise DataError(f"{path}: {hint} ({_short(e)})") from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The data set's arrays of an npz archive (x_train, y_train, x_test, y_test, classes)."""
    arrays = read_npz_arrays(path, (*NPZ_KEYS, "classes"))
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)} (found {', '.join(arrays) or 'nothing'}); "
                        f"an npz data set needs {', '.join(NPZ_KEYS)}")
    return arrays


def _as_uint8(x: np.ndarray, where: str) -> np.ndarray:
    """uint8 pixels from uint8, integer 0..255 or float 0..1 arrays."""
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind not in "iuf":
        raise DataError(f"{where}: images must be uint8, or float in [0, 1], found {x.dtype}")
    if x.size == 0:  # no values to check; check_dataset reports the empty set
        return x.astype(np.uint8)
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise DataError(f"{where}: images contain NaN or Inf; clean them before saving")
        lo, hi, top = x.min(), x.max(), 1
    else:
        lo, hi, top = x.min(), x.max(), 255
    if lo < 0 or hi > top:
        raise DataError(f"{where}: {x.dtype} images must be in [0, {top}], found [{lo}, {hi}]; "
                        "scale them (float in [0, 1], or uint8)")
    return np.rint(x * 255).astype(np.uint8) if top == 1 else x.astype(np.uint8)


def _channels_first(x: np.ndarray) -> np.ndarray | None:
    """(N, C, H, W) from a 4-D array that is NHWC or NCHW (C in 1, 3, 4), or None if neither."""
    nhwc, nchw = x.shape[3] in (1, 3, 4), x.shape[1] in (1, 3, 4)
    if nhwc and nchw:  # e.g. (N, 3, 4, 4): prefer the reading that gives square images
        nhwc = x.shape[1] == x.shape[2] or x.shape[2] != x.shape[3]
    if nhwc:
        return x.transpose(0, 3, 1, 2)
    return x if nchw else None


def npz_images(x: np.ndarray, where: str) -> np.ndarray:
    """uint8 (N, C, H, W) from N×H×W, N×H×W×C or N×C×H×W images (uint8, or float in [0, 1])."""
    layout = x[:, None] if x.ndim == 3 else _channels_first(x) if x.ndim == 4 else None
    if layout is None:
        raise DataError(f"{where}: images must be N×H×W, N×H×W×C or N×C×H×W with C in 1, 3, 4; "
                        f"found shape {x.shape}")
    return np.ascontiguousarray(_as_uint8(layout, where))


def npz_labels(y: np.ndarray, where: str) -> np.ndarray:
    """int64 (N,) from integer labels >= 0, shaped (N,) or (N, 1) (Keras saves the latter)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be a 1-D integer array, found {_describe(y)}")
    if y.size and y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {y.min()}")
    return y.astype(np.int64)


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    """x_train, y_train, x_test, y_test and class names from an npz with those keys.

    Class names come from an optional `classes` array of strings, else "0", "1", ... up to the
    largest label.
    """
    arrays = _load_npz(Path(path))
    x_train, x_test = (npz_images(arrays[k], f"{path}[{k}]") for k in ("x_train", "x_test"))
    y_train, y_test = (npz_labels(arrays[k], f"{path}[{k}]") for k in ("y_train", "y_test"))
    classes = arrays.get("classes")
    if classes is None:
        top = max((int(y.max()) for y in (y_train, y_test) if y.size), default=-1)
        return x_train, y_train, x_test, y_test, [str(i) for i in range(top + 1)]
    if classes.ndim != 1 or classes.dtype.kind != "U":
        raise DataError(f"{path}[classes]: must be a 1-D array of strings, found {_describe(classes)}")
    return x_train, y_train, x_test, y_test, [str(c) for c in classes]


# --- image folders -------------------------------------------------------------------------------


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_images(root: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Image files under root/<class>/ (sorted, so the order never depends on the file system)."""
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    return files, labels


def read_image(path: Path, gray: bool | None = None, size: tuple[int, int] | None = None,
               wanted: str = "expected") -> np.ndarray:
    """(H, W) for grayscale, (H, W, 3) for colour: as the file is (gray=None), or converted. With `size`
    (W, H) the size is checked before any pixel is decoded. Any unreadable file is a DataError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about odd metadata (corrupt EXIF): no stray lines
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # one line, not a warning
            with Image.open(path) as im:
                if size is not None and im.size != tuple(size):
                    raise DataError(f"{path}: the image is {im.size[0]}x{im.size[1]} pixels, {wanted} "
                                    f"{size[0]}x{size[1]}; resize it first")
                gray = im.mode in GRAY_MODES if gray is None else gray
                return np.asarray(im.convert("L" if gray else "RGB"))
    except DataError:
        raise
    except Exception as e:  # Pillow raises many types on bad files (OSError, SyntaxError, ...)
        raise DataError(f"{path}: cannot read the image ({_short(e)}); remove or replace it") from None


def stack_images(files: list[Path]) -> np.ndarray:
    """uint8 (N, C, H, W) from image files of one size; C = 1 if all are grayscale, else 3."""
    images = [read_image(f) for f in files]
    for f, im in zip(files, images):
        if im.shape[:2] != images[0].shape[:2]:
            (h0, w0), (h, w) = images[0].shape[:2], im.shape[:2]
            raise DataError(f"{files[0]} is {w0}x{h0} but {f} is {w}x{h}: all images must have one "
                            "size; resize them first")
    if any(im.ndim == 3 for im in images):  # some colour: grayscale ones become grey RGB
        images = [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im for im in images]
    x = np.stack(images)  # (N, H, W) or (N, H, W, 3)
    return x[:, None] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def split_80_20(y: np.ndarray, where: object) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices: a stratified 80/20 split, the same every time (seed 0)."""
    from sklearn.model_selection import train_test_split  # slow to import; only some sets need it

    try:
        return train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    except ValueError as e:
        raise DataError(f"{where}: cannot make a stratified 80/20 split ({_short(e)}); add images "
                        "or give train/ and test/ subfolders") from None


def read_image_folder(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    """x_train, y_train, x_test, y_test and class names from root/<class>/*.png (or .jpg, ...).

    With root/train/<class>/ and root/test/<class>/ those are the split; otherwise it is a
    stratified 80/20 split of everything (seed 0).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    has_split = [(root / s).is_dir() for s in ("train", "test")]
    if any(has_split) and not all(has_split):
        raise DataError(f"{root}: has one of train/ and test/ but not the other; add the other or "
                        "put the class folders directly in the root")
    tops = [root / "train", root / "test"] if all(has_split) else [root]
    classes = sorted({d.name for top in tops for d in _class_dirs(top)})
    lists = [_list_images(top, classes) for top in tops]
    files = [f for fs, _ in lists for f in fs]
    if not files:
        raise DataError(f"{root}: no images found; put them in {root}/<class name>/ "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    x = stack_images(files)
    y = np.array([label for _, ys in lists for label in ys], dtype=np.int64)
    if all(has_split):
        n = len(lists[0][0])
        return x[:n], y[:n], x[n:], y[n:], classes
    train, test = split_80_20(y, root)
    return x[train], y[train], x[test], y[test], classes


# --- the check every reader ends with ------------------------------------------------------------


def check_dataset(ds: Dataset) -> Dataset:
    """`ds` unchanged if it is usable, else DataError: 4-D uint8 images, as many int64 labels,
    non-empty train and test sets of one image shape, labels in [0, num_classes)."""
    where, n = ds.source or ds.name, len(ds.classes)
    if n == 0:
        raise DataError(f"{where}: no classes")
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
            raise DataError(f"{where}: {split} images must be uint8 (N, C, H, W), found {_describe(x)}")
        if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.ndim != 1:
            raise DataError(f"{where}: {split} labels must be int64 (N,), found {_describe(y)}")
        if len(x) != len(y):
            raise DataError(f"{where}: {split} set has {len(x)} images but {len(y)} labels; "
                            "the files do not belong together")
        if len(x) == 0 or 0 in x.shape:
            raise DataError(f"{where}: {split} set is empty ({split} images {x.shape})")
        if y.min() < 0 or y.max() >= n:
            raise DataError(f"{where}: {split} labels must be in [0, {n}) for {n} classes, "
                            f"found {y.min()}..{y.max()}")
    if ds.x_train.shape[1:] != ds.x_test.shape[1:]:
        raise DataError(f"{where}: train images are {ds.x_train.shape[1:]} (C, H, W) but test "
                        f"images are {ds.x_test.shape[1:]}")
    return ds
