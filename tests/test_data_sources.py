"""Where data comes from: search order, the cache, downloads (network replaced by local copies),
digits, the real Debian Fashion-MNIST when installed, and `describe_datasets`.
Run: .venv/bin/pytest tests/test_data_sources.py -q"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from test_data_writers import IDX_NAMES, write_cifar_folder, write_idx_set

from aelab.data import dataset_names, describe_datasets, load_dataset, sources
from aelab.errors import DataError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def no_real_data(tmp_path, monkeypatch):
    """Nothing outside tmp_path is looked at: an empty cache and an empty system folder."""
    monkeypatch.setenv("AELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SYSTEM_DIR", tmp_path / "system")


@dataclasses.dataclass
class Mirror:
    folder: Path  # what the web serves, by file name
    fetched: list[str]  # the URLs asked for, in order


@pytest.fixture
def mirror(tmp_path, monkeypatch) -> Mirror:
    """A local folder standing in for the web: fetch_url copies the URL's file name from it."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    fetched: list[str] = []

    def fake_fetch(url: str, dest: Path) -> None:
        fetched.append(url)
        src = folder / url.rsplit("/", 1)[-1]
        if not src.exists():
            raise OSError(f"404 for {url}")
        shutil.copyfile(src, dest)

    monkeypatch.setattr(sources, "fetch_url", fake_fetch)
    return Mirror(folder, fetched)


def _trust_mirror(monkeypatch, name: str, mirror: Path) -> None:
    """Make the registered sums those of the files on the fake mirror."""
    def trusted(remote):
        digest = hashlib.sha256((mirror / remote.filename).read_bytes()).hexdigest()
        return dataclasses.replace(remote, sha256=digest)

    source = sources.SOURCES[name]
    fields = {"remotes": tuple(map(trusted, source.remotes))} if hasattr(source, "remotes") \
        else {"remote": trusted(source.remote)}
    monkeypatch.setitem(sources.SOURCES, name, dataclasses.replace(source, **fields))


def _files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# --- search order -------------------------------------------------------------------------------


def test_search_order_data_dir_then_subfolder_then_cache_then_system(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "system" / "mnist", n_train=10)
    assert load_dataset("mnist").source == str(tmp_path / "system" / "mnist")
    write_idx_set(tmp_path / "cache" / "mnist", n_train=11)
    assert len(load_dataset("mnist").x_train) == 11
    write_idx_set(tmp_path / "mine" / "mnist", n_train=12)
    assert len(load_dataset("mnist", data_dir=tmp_path / "mine").x_train) == 12
    write_idx_set(tmp_path / "mine", n_train=13)
    assert len(load_dataset("mnist", data_dir=str(tmp_path / "mine")).x_train) == 13
    monkeypatch.setenv("AELAB_CACHE", str(tmp_path / "elsewhere"))
    assert load_dataset("mnist").source == str(tmp_path / "system" / "mnist")


def test_incomplete_folder_is_skipped(tmp_path):
    write_idx_set(tmp_path / "mnist")
    (tmp_path / "mnist" / (IDX_NAMES[3] + ".gz")).unlink()
    with pytest.raises(DataError, match="mnist: not found; looked in .*mnist"):
        load_dataset("mnist", data_dir=tmp_path)


def test_not_found_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path / "d")
    msg = str(err.value)
    for fragment in (str(tmp_path / "d"), str(tmp_path / "cache" / "fashion-mnist"),
                     str(tmp_path / "system" / "fashion-mnist"), "apt-get install dataset-fashion-mnist",
                     "aelab train data=fashion-mnist data.download=true"):
        assert fragment in msg


def test_names_are_forgiving_and_listed():
    assert dataset_names() == ["digits", "fashion-mnist", "mnist", "cifar10"]
    assert sources.get_source("Fashion_MNIST").name == "fashion-mnist"
    assert sources.get_source("CIFAR-10").name == "cifar10"
    with pytest.raises(DataError, match="npz:PATH .* folder:PATH"):
        load_dataset("svhn")
    with pytest.raises(DataError, match="give a path after 'npz:'"):
        load_dataset("npz:")


def test_digits():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.max() == 255
    assert np.bincount(ds.y_test).min() >= 35  # stratified: every digit ~36 times
    assert np.array_equal(ds.y_test, load_dataset("digits").y_test)  # seeded


def test_digits_are_scikit_learns_and_their_split_is_cached_without_importing_it(tmp_path):
    from sklearn.datasets import load_digits

    from aelab.data.formats import split_80_20

    ref = load_digits()
    train, test = split_80_20(ref.target, "digits")
    first = load_dataset("digits")  # computes the split and caches it
    assert np.array_equal(first.x_train, np.rint(ref.images[train] * (255 / 16)).astype(np.uint8)[:, None])
    assert np.array_equal(first.y_test, ref.target[test])
    (cached,) = (tmp_path / "cache" / "splits").glob("digits-80-20-*.npz")
    with np.load(cached) as f:
        assert np.array_equal(f["train"], train) and np.array_equal(f["test"], test)
    cached.write_bytes(b"half a file")  # a damaged cache is computed again and rewritten
    again = load_dataset("digits")
    assert np.array_equal(again.x_train, first.x_train) and np.array_equal(again.y_test, first.y_test)
    with np.load(cached) as f:
        assert np.array_equal(f["test"], test)
    probe = ("import sys; from aelab.data import load_dataset; load_dataset('digits'); "
             "print(sorted(m for m in sys.modules if m.startswith('sklearn')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "AELAB_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_debian_fashion_mnist(monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DIR", DEBIAN_FASHION.parent)
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.num_classes == 10 and ds.classes[9] == "Ankle boot"
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert ds.source == str(DEBIAN_FASHION)


# --- downloads ----------------------------------------------------------------------------------


def test_download_idx_into_cache(tmp_path, mirror, monkeypatch):
    write_idx_set(mirror.folder, gz=True)
    _trust_mirror(monkeypatch, "mnist", mirror.folder)
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist")  # download is opt-in
    assert mirror.fetched == []
    ds = load_dataset("mnist", download=True)
    assert ds.x_train.shape == (12, 1, 4, 4) and ds.source == str(tmp_path / "cache" / "mnist")
    cached = sorted(p.name for p in _files_in(tmp_path / "cache"))
    assert cached == sorted(n + ".gz" for n in IDX_NAMES)  # no temp files left
    assert len(mirror.fetched) == 4 and mirror.fetched[0].startswith("https://ossci-datasets")


def test_download_falls_back_to_the_next_mirror(tmp_path, mirror, monkeypatch):
    write_idx_set(mirror.folder, gz=True)
    _trust_mirror(monkeypatch, "mnist", mirror.folder)
    real_fetch = sources.fetch_url

    def flaky(url, dest):
        if "ossci" in url:
            raise OSError("connection reset")
        real_fetch(url, dest)

    monkeypatch.setattr(sources, "fetch_url", flaky)
    assert len(load_dataset("mnist", download=True).x_test) == 6
    assert len(mirror.fetched) == 4 and all("cvdf" in u for u in mirror.fetched)


def test_checksum_mismatch_leaves_nothing(tmp_path, mirror):
    write_idx_set(mirror.folder, gz=True)  # not the real files: the real SHA-256 sums cannot match
    with pytest.raises(DataError, match="SHA-256 mismatch .* expected 3aede38d"):
        load_dataset("fashion-mnist", download=True)
    assert _files_in(tmp_path / "cache") == []


def _cifar_archive(mirror: Path, tmp_path: Path, evil: bool = False) -> None:
    write_cifar_folder(tmp_path / "build" / "cifar-10-batches-py")
    with tarfile.open(mirror / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        if evil:  # a member that climbs out of the extraction folder
            info = tarfile.TarInfo("../escaped.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))


def test_download_cifar_extracts_and_removes_archive(tmp_path, mirror, monkeypatch):
    _cifar_archive(mirror.folder, tmp_path)
    _trust_mirror(monkeypatch, "cifar10", mirror.folder)
    ds = load_dataset("cifar10", download=True)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.classes[-1] == "truck"
    assert sorted(p.name for p in (tmp_path / "cache" / "cifar10").iterdir()) == ["cifar-10-batches-py"]


def test_download_cifar_refuses_path_traversal(tmp_path, mirror, monkeypatch):
    _cifar_archive(mirror.folder, tmp_path, evil=True)
    _trust_mirror(monkeypatch, "cifar10", mirror.folder)
    with pytest.raises(DataError, match="cannot extract"):
        load_dataset("cifar10", download=True)
    assert not (tmp_path / "cache" / "escaped.txt").exists()
    assert _files_in(tmp_path / "cache") == []


# --- describe_datasets --------------------------------------------------------------------------


def test_describe_datasets_finds_files_without_loading(tmp_path):
    write_cifar_folder(tmp_path / "d" / "cifar-10-batches-py")
    (tmp_path / "d" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"corrupt")  # not read
    rows = {r["name"]: r for r in describe_datasets(tmp_path / "d")}
    assert list(rows) == dataset_names()
    assert rows["digits"]["available"] and rows["digits"]["found"].endswith("digits.csv.gz")
    assert rows["cifar10"]["found"] == str(tmp_path / "d" / "cifar-10-batches-py")
    assert rows["cifar10"]["hint"] == ""
    assert not rows["fashion-mnist"]["available"] and rows["fashion-mnist"]["found"] == ""
    assert "apt-get install dataset-fashion-mnist" in rows["fashion-mnist"]["hint"]
    assert all(r["description"] for r in rows.values())
