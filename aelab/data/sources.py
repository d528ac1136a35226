"""Where data comes from: local folders, the cache, Debian's packages, public mirrors, scikit-learn.

Each named data set is a source with the same small interface (`candidates`, `find`, `load`,
`download`, `how_to_get`); `SOURCES` is the registry that `aelab.data` iterates. Files are looked
for in data_dir, data_dir/<name>, the cache ($AELAB_CACHE, default ~/.cache/aelab)/<name>, then
/usr/share/datasets/<name> (Debian's `dataset-fashion-mnist` installs there). Downloads go to the
cache, each file checked against its SHA-256 before it is moved into place.
"""
from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import Dataset
from .formats import (CIFAR_FILES, check_dataset, read_cifar_folder, read_idx_images,
                      read_idx_labels, read_image_folder, read_npz, split_80_20)

CACHE_ENV = "AELAB_CACHE"
SYSTEM_DIR = Path("/usr/share/datasets")  # a module global so that tests can point it elsewhere
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def cache_root() -> Path:
    """Where downloads go and files are looked for: $AELAB_CACHE, default ~/.cache/aelab."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "aelab").expanduser()


def search_dirs(name: str, data_dir: str | Path | None) -> list[Path]:
    """The folders looked in for data set `name`, in order."""
    given = [Path(data_dir).expanduser(), Path(data_dir).expanduser() / name] if data_dir else []
    return [*given, cache_root() / name, SYSTEM_DIR / name]


# --- downloads -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Remote:
    """One file on the public mirrors and its SHA-256."""

    filename: str
    sha256: str
    urls: tuple[str, ...]


def fetch_url(url: str, dest: Path) -> None:
    """Copy `url` to `dest`, with a progress bar. Tests replace this function (no network there)."""
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        name = url.rsplit("/", 1)[-1]
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _make_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot create the folder ({e}); set {CACHE_ENV} to a "
                        "writable folder") from None


def download_file(remote: Remote, folder: Path) -> Path:
    """folder/<filename>, fetched from the first mirror whose bytes have the expected SHA-256.

    The bytes land in a temp file in the same folder and only a checked file is moved into place
    (os.replace is atomic), so an interrupted or tampered download never looks like data.
    """
    _make_dir(folder)
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{remote.filename}.", suffix=".part")
    os.close(fd)
    tmp, failures = Path(name), []
    try:
        for url in remote.urls:
            try:
                fetch_url(url, tmp)
            except (OSError, http.client.HTTPException, ValueError) as e:
                failures.append(f"{url}: {type(e).__name__}: {e}")
                continue
            digest = sha256_of(tmp)
            if digest == remote.sha256:
                os.replace(tmp, folder / remote.filename)
                return folder / remote.filename
            failures.append(f"{url}: SHA-256 mismatch (got {digest}, expected {remote.sha256})")
    finally:
        tmp.unlink(missing_ok=True)
    raise DataError(f"{remote.filename}: download failed: {'; '.join(failures)}; check the "
                    f"network or put the file in {folder} by hand")


def extract_tar(archive: Path, folder: Path, member: str) -> Path:
    """folder/member, extracted from `archive` (whose top folder is `member`) all or nothing."""
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".extract-"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")  # refuses absolute paths, "..", links out, devices
        if not (tmp / member).is_dir():
            raise DataError(f"{archive}: no {member}/ folder inside; delete it and download again")
        shutil.rmtree(folder / member, ignore_errors=True)  # an incomplete copy from before
        os.replace(tmp / member, folder / member)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive}: cannot extract ({type(e).__name__}: {e}); delete it and "
                        "download again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / member


# --- the named data sets -------------------------------------------------------------------------


def _idx_files(folder: Path, plain_first: bool = False) -> list[Path] | None:
    """The four IDX files in `folder` (each gzipped or not), or None if any is missing."""
    found = []
    for stem in IDX_STEMS:
        names = (folder / stem, folder / f"{stem}.gz") if plain_first else (folder / f"{stem}.gz", folder / stem)
        path = next((p for p in names if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


@dataclass(frozen=True)
class IdxSource:
    """An MNIST-style set: four IDX files in one folder."""

    name: str
    description: str
    classes: tuple[str, ...]
    remotes: tuple[Remote, ...]
    apt_package: str = ""

    def candidates(self, data_dir: str | Path | None) -> list[Path]:
        return search_dirs(self.name, data_dir)

    def find(self, data_dir: str | Path | None) -> Path | None:
        return next((d for d in self.candidates(data_dir) if _idx_files(d)), None)

    def load(self, folder: Path, mmap: bool = False) -> Dataset:
        files = _idx_files(Path(folder), plain_first=mmap)
        if files is None:
            raise DataError(f"{folder}: missing IDX files; it needs {', '.join(IDX_STEMS)} (.gz or not)")
        images = (lambda f: _mapped_idx(f, self.name)) if mmap else read_idx_images
        x_train, y_train, x_test, y_test = (read(f) for read, f in zip(
            (images, read_idx_labels, images, read_idx_labels), files))
        return check_dataset(Dataset(self.name, x_train, y_train, x_test, y_test,
                                     classes=list(self.classes), source=str(folder)))

    def download(self) -> Path:
        folder = cache_root() / self.name
        for remote in self.remotes:
            if not (folder / remote.filename).is_file():  # keep what an earlier run fetched
                download_file(remote, folder)
        return folder

    def how_to_get(self) -> str:
        ways = [f"`sudo apt-get install {self.apt_package}`"] if self.apt_package else []
        ways.append(f"`aelab train data={self.name} data.download=true`")
        ways.append(f"put {', '.join(s + '.gz' for s in IDX_STEMS)} in {cache_root() / self.name}")
        return ", or ".join(ways)


def _mapped_idx(path: Path, name: str) -> np.ndarray:
    if path.suffix == ".gz":
        raise DataError(f"{path}: a gzipped file cannot be memory-mapped (data.stream=true); gunzip the four "
                        f"IDX files into a folder and set data.data_dir to it, or run `aelab data --export {name} "
                        "FOLDER` and train with data=npy:FOLDER")
    from .stream import idx_memmap

    return idx_memmap(path)


@dataclass(frozen=True)
class CifarSource:
    """CIFAR-10's python version: the `cifar-10-batches-py` folder of pickled batches."""

    name: str
    description: str
    remote: Remote

    def candidates(self, data_dir: str | Path | None) -> list[Path]:
        # The folder itself may be given as data_dir, or any search folder may hold it.
        return [c for d in search_dirs(self.name, data_dir) for c in (d, d / CIFAR_FOLDER)]

    def find(self, data_dir: str | Path | None) -> Path | None:
        found = (d for d in self.candidates(data_dir) if all((d / f).is_file() for f in CIFAR_FILES))
        return next(found, None)

    def load(self, folder: Path, mmap: bool = False) -> Dataset:  # pickled batches: never mapped
        x_train, y_train, x_test, y_test, classes = read_cifar_folder(folder)
        return check_dataset(Dataset(self.name, x_train, y_train, x_test, y_test,
                                     classes=classes, source=str(folder)))

    def download(self) -> Path:
        folder = cache_root() / self.name
        archive = download_file(self.remote, folder)
        try:
            return extract_tar(archive, folder, CIFAR_FOLDER)
        finally:
            archive.unlink(missing_ok=True)  # 170 MB that the extracted folder makes redundant

    def how_to_get(self) -> str:
        return (f"`aelab train data={self.name} data.download=true`, or extract {CIFAR_URL} "
                f"into {cache_root() / self.name} (giving {CIFAR_FOLDER}/)")


@dataclass(frozen=True)
class DigitsSource:
    """scikit-learn's bundled 8x8 digits: always there, nothing to download."""

    name: str = "digits"
    description: str = "scikit-learn digits: 1,797 8x8 grey handwritten digits, bundled"

    def candidates(self, data_dir: str | Path | None) -> list[Path]:
        # find_spec locates the file without importing scikit-learn (slow) for `aelab data`.
        spec = importlib.util.find_spec("sklearn")
        return [Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"] if spec else []

    def find(self, data_dir: str | Path | None) -> Path | None:
        return next((p for p in self.candidates(data_dir) if p.is_file()), None)

    def load(self, path: Path, mmap: bool = False) -> Dataset:  # bundled and tiny: never mapped
        data = np.loadtxt(path, delimiter=",")  # what load_digits reads: 64 pixels in 0..16, then the label
        x = np.rint(data[:, :-1].reshape(-1, 1, 8, 8) * (255 / 16)).astype(np.uint8)  # (1797, 1, 8, 8)
        y = data[:, -1].astype(np.int64)
        train, test = _cached_split(y, self.name)
        return check_dataset(Dataset(self.name, x[train], y[train], x[test], y[test],
                                     classes=[str(i) for i in range(10)],
                                     source="scikit-learn load_digits"))

    def download(self) -> Path:
        raise DataError(f"digits: ships with scikit-learn; {self.how_to_get()}")

    def how_to_get(self) -> str:
        return "`pip install scikit-learn` (digits ships with it)"


def _cached_split(y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """`split_80_20(y)`, kept in the cache under the labels' hash and scikit-learn's version: the same
    split, without importing scikit-learn (a second of CPU) in every process that loads the set."""
    from importlib.metadata import version

    digest = hashlib.sha256(y.astype(np.int64).tobytes()).hexdigest()[:16]
    path = cache_root() / "splits" / f"{where}-80-20-{digest}-sklearn-{version('scikit-learn')}.npz"
    try:
        with np.load(path) as f:  # arrays only: np.load refuses pickled objects by default
            train, test = f["train"], f["test"]
        if len(train) + len(test) == len(y):
            return train, test
    except (OSError, KeyError, ValueError):
        pass  # absent or damaged: computed again and rewritten
    train, test = split_80_20(y, where)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, train=train, test=test)
        os.replace(tmp.name, path)  # atomic: a concurrent reader sees the old file or the whole new one
    except OSError:  # a read-only or full cache only costs the import next time
        if tmp is not None:
            Path(tmp.name).unlink(missing_ok=True)
    return train, test


Source = IdxSource | CifarSource | DigitsSource  # what SOURCES holds: one interface, three kinds


# SHA-256 sums from tensorflow-datasets' url_checksums (fashion_mnist.txt, mnist.txt, cifar10.csv).
# The MNIST sums are of the storage.googleapis.com/cvdf-datasets copies, which are byte-for-byte
# LeCun's originals (same sizes as torchvision's, whose list has only MD5s); should the other mirror
# ever serve different bytes, the check fails there and the next mirror is tried.
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
               "https://storage.googleapis.com/cvdf-datasets/mnist/")
_FASHION_SHA256 = ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                   "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                   "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                   "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")
_MNIST_SHA256 = ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                 "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                 "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                 "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")


def _idx_remotes(bases: tuple[str, ...], sums: tuple[str, ...]) -> tuple[Remote, ...]:
    return tuple(Remote(f"{stem}.gz", digest, tuple(b + f"{stem}.gz" for b in bases))
                 for stem, digest in zip(IDX_STEMS, sums))


SOURCES = {s.name: s for s in (
    DigitsSource(),
    IdxSource("fashion-mnist", "Fashion-MNIST: 70,000 28x28 grey clothing images, 10 classes",
              FASHION_CLASSES, _idx_remotes((_FASHION_URL,), _FASHION_SHA256),
              apt_package="dataset-fashion-mnist"),
    IdxSource("mnist", "MNIST: 70,000 28x28 grey handwritten digits",
              tuple(str(i) for i in range(10)), _idx_remotes(_MNIST_URLS, _MNIST_SHA256)),
    CifarSource("cifar10", "CIFAR-10: 60,000 32x32 colour images, 10 object classes",
                Remote("cifar-10-python.tar.gz",
                       "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                       (CIFAR_URL,))),
)}
_ALIASES = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}


def get_source(name: str) -> Source:
    """The registered source for `name` (case and `_`/`-` do not matter)."""
    key = name.strip().lower().replace("_", "-")
    source = SOURCES.get(_ALIASES.get(key, key))
    if source is None:
        raise DataError(f"unknown data set {name!r}; valid: {', '.join(SOURCES)}, "
                        "npz:PATH (an .npz with x_train, y_train, x_test, y_test), "
                        "folder:PATH (one subfolder of images per class) or npy:FOLDER (x_train.npy, ...)")
    return source


def not_found(source: Source, data_dir: str | Path | None) -> DataError:
    """The error for a named set found nowhere: where it looked and how to get it."""
    looked = ", ".join(str(p) for p in source.candidates(data_dir))
    return DataError(f"{source.name}: not found; looked in {looked}. Get it with {source.how_to_get()}")


def _local_path(path: str, data_dir: str | Path | None) -> Path:
    """`path` as given, or under data_dir when it is relative and only exists there."""
    given = Path(path).expanduser()
    tries = [given]
    if data_dir and not given.is_absolute():
        tries.append(Path(data_dir).expanduser() / given)
    found = next((p for p in tries if p.exists()), None)
    if found is None:
        raise DataError(f"{path}: not found (looked for {' and '.join(str(p.absolute()) for p in tries)})")
    return found


def load_path(kind: str, path: str, data_dir: str | Path | None = None, mmap: bool = False) -> Dataset:
    """The data set in an npz file (`kind` "npz"), an image folder ("folder") or a folder of .npy
    files ("npy", images memory-mapped with `mmap`)."""
    local = _local_path(path, data_dir)
    if kind == "npy":
        from .stream import read_npy

        return read_npy(local, mmap)
    read = read_npz if kind == "npz" else read_image_folder
    x_train, y_train, x_test, y_test, classes = read(local)
    return check_dataset(Dataset(f"{kind}:{path}", x_train, y_train, x_test, y_test,
                                 classes=classes, source=str(local)))
