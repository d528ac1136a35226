"""Memory-mapped data streamed in chunks: same batches as in memory, every row once an epoch."""
import gzip

import numpy as np
import pytest
import torch

from aelab.config import TrainConfig
from aelab.data.device import to_device
from aelab.data.stream import StreamData, idx_memmap, open_npy, save_npy
from aelab.engine import evaluate, fit
from aelab.errors import DataError
from aelab.models import build_model


@pytest.fixture
def streamed(tmp_path, blobs):
    return open_npy(save_npy(blobs, tmp_path / "npy"), "cpu", chunk_rows=64)


def test_epoch_visits_every_row_once_chunk_by_chunk(streamed):
    train = streamed.train
    gen = torch.Generator().manual_seed(3)
    perm = train.permutation(gen)
    assert sorted(perm.tolist()) == list(range(len(train)))
    chunks = (perm // 64).tolist()
    runs = [c for i, c in enumerate(chunks) if i == 0 or c != chunks[i - 1]]
    assert len(runs) == len(set(runs)) == -(-len(train) // 64)  # each chunk is one consecutive run
    assert not torch.equal(perm, torch.arange(len(train)))
    assert torch.equal(perm, train.permutation(torch.Generator().manual_seed(3)))  # seeded


def test_batches_equal_in_memory_batches(streamed, blobs):
    mem = to_device(blobs, "cpu").train
    for idx in (torch.arange(60, 70), torch.tensor([5, 1, 63]), torch.tensor([70, 10, 130])):  # in / across chunks
        a, b = streamed.train.batch(idx), mem.batch(idx)
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])


def test_evaluate_matches_in_memory(streamed, blobs):
    torch.manual_seed(0)
    model = build_model("dense", (1, 8, 8))
    mem = to_device(blobs, "cpu")
    got, want = evaluate(model, streamed.test, batch_size=32), evaluate(model, mem.test, batch_size=32)
    assert got == pytest.approx(want, rel=1e-6)


def test_fit_on_streamed_data_learns_and_is_seeded(streamed):
    def run():
        torch.manual_seed(0)
        m = build_model("conv", (1, 8, 8))
        fit(m, streamed.train, TrainConfig(epochs=3, batch_size=16, progress="off"), seed=0)
        return m

    torch.manual_seed(0)
    fresh = evaluate(build_model("conv", (1, 8, 8)), streamed.test)["loss"]
    a, b = run(), run()
    assert evaluate(a, streamed.test)["loss"] < 0.9 * fresh
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_idx_memmap(tmp_path, blobs):
    x = blobs.x_train[:, 0]  # (N, 8, 8)
    raw = np.array([2051, len(x), 8, 8], dtype=">u4").tobytes() + x.tobytes()
    (tmp_path / "imgs").write_bytes(raw)
    mm = idx_memmap(tmp_path / "imgs")
    assert mm.shape == (len(x), 1, 8, 8) and np.array_equal(mm[:, 0], x)
    data = StreamData(mm, blobs.y_train, "cpu", chunk_rows=100)
    assert torch.equal(data.batch(slice(0, 5))["x"], torch.from_numpy(x[:5, None]).float() / 255)
    (tmp_path / "imgs.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match="uncompressed"):
        idx_memmap(tmp_path / "imgs.gz")
    (tmp_path / "short").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="file size"):
        idx_memmap(tmp_path / "short")


def test_batches_never_read_through_the_map(streamed, blobs, monkeypatch):
    """Pages touched through np.memmap stay resident; every read, across chunks too, goes by np.fromfile."""
    def refuse(self, key):
        raise AssertionError("read through the memory map")

    monkeypatch.setattr(np.memmap, "__getitem__", refuse)
    mem = to_device(blobs, "cpu").train
    perm = streamed.train.permutation(torch.Generator().manual_seed(1))
    for s in range(0, len(perm), 50):  # batches of 50 against chunks of 64: many cross a boundary
        idx = perm[s:s + 50]
        assert torch.equal(streamed.train.batch(idx)["x"], mem.batch(idx)["x"])


def test_reads_stay_within_one_chunk(streamed, blobs, monkeypatch):
    """Chunks next to each other in an epoch's order are far apart in the file: a batch across a
    boundary must read each chunk alone, never the span between them (that held the whole file)."""
    data, reads = streamed.train, []
    real = type(data)._read

    def spy(self, start, stop):
        reads.append((start, stop))
        return real(self, start, stop)

    monkeypatch.setattr(type(data), "_read", spy)
    mem = to_device(blobs, "cpu").train
    for seed in range(5):
        perm = data.permutation(torch.Generator().manual_seed(seed))
        for s in range(0, len(perm), 50):
            idx = perm[s:s + 50]
            assert torch.equal(data.batch(idx)["x"], mem.batch(idx)["x"])
    c = data.chunk_rows
    assert reads and all(stop - start <= c and start // c == (stop - 1) // c for start, stop in reads)
    assert len(reads) <= 5 * (len(data) // c + 1) + 5  # each chunk read once an epoch (plus a reused one)
