"""data.stream from a config and the CLI: npy: folders and plain IDX files stay on disk, with the
same splits (validation rows, hidden labels) as the in-memory path."""
import json

import numpy as np
import pytest
import torch
from test_cli import run_cli
from test_data_writers import write_idx_set

from aelab import runs
from aelab.data import load_dataset
from aelab.data.device import to_device
from aelab.data.stream import read_npy, save_npy, stream_splits
from aelab.engine import evaluate
from aelab.errors import ConfigError, DataError
from aelab.studies import study_names
from aelab.studies import run_study

SPLIT = dict(val_fraction=0.25, seed=3, labels_per_class=5)


@pytest.fixture
def npy_dir(tmp_path, blobs):
    return save_npy(blobs, tmp_path / "npy")


def test_read_npy_maps_images_and_keeps_class_names(npy_dir, blobs):
    ds = read_npy(npy_dir)
    assert isinstance(ds.x_train, np.memmap) and not isinstance(ds.y_train, np.memmap)
    assert ds.classes == blobs.classes and np.array_equal(ds.x_test, blobs.x_test)
    (npy_dir / "classes.json").unlink()  # without names: "0".."k-1" from the labels
    assert read_npy(npy_dir).classes == [str(i) for i in range(blobs.num_classes)]
    assert not isinstance(read_npy(npy_dir, mmap=False).x_train, np.memmap)


def test_stream_splits_equal_the_in_memory_splits(npy_dir, blobs):
    s, m = stream_splits(read_npy(npy_dir), "cpu", chunk_rows=64, **SPLIT), to_device(blobs, "cpu", **SPLIT)
    idx = torch.randperm(len(m.train), generator=torch.Generator().manual_seed(0))[:40]
    for part in ("train", "val", "test"):
        a, b = getattr(s, part), getattr(m, part)
        assert len(a) == len(b)
        whole_a, whole_b = a.batch(slice(0, len(a))), b.batch(slice(0, len(b)))
        assert torch.equal(whole_a["x"], whole_b["x"]) and torch.equal(whole_a["y"], whole_b["y"])
        pick = idx[idx < len(a)]
        assert torch.equal(a.batch(pick)["x"], b.batch(pick)["x"])
        assert torch.equal(a.subset(pick).x, b.subset(pick).x)
    assert (s.train.y < 0).any()  # labels hidden the same way
    la, lb = s.train.labelled(), m.train.labelled()
    assert torch.equal(la.batch(slice(0, len(la)))["x"], lb.batch(slice(0, len(lb)))["x"])


def test_a_part_of_the_file_is_visited_once_an_epoch_chunk_by_chunk(npy_dir):
    train = stream_splits(read_npy(npy_dir), "cpu", chunk_rows=64, **SPLIT).train
    perm = train.permutation(torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(len(train)))
    chunks = (train.rows[perm.numpy()] // 64).tolist()
    runs_ = [c for i, c in enumerate(chunks) if i == 0 or c != chunks[i - 1]]
    assert len(runs_) == len(set(runs_))  # every chunk in one consecutive run


def test_train_with_stream_writes_a_run_that_in_memory_evaluation_agrees_with(tmp_path, npy_dir, blobs):
    path = runs.train(overrides=[f"data=npy:{npy_dir}", "data.stream=true", "data.chunk_rows=50",
                                 "data.val_fraction=0.2", "model=conv", "train.epochs=2", "train.batch_size=32",
                                 "eval.tsne=false", "train.progress=off", f"out_dir={tmp_path}", "name=s"])
    metrics = json.loads((path / "metrics.json").read_text())
    assert "val.loss" in (path / "history.jsonl").read_text()
    run = runs.load_run(path)
    want = evaluate(run.model, to_device(blobs, "cpu").test)
    assert metrics["test.mse"] == pytest.approx(want["mse"], rel=1e-5)
    assert (path / "figures" / "codes_pca.png").is_file()


def test_plain_idx_files_are_mapped_and_gzipped_ones_refused(tmp_path):
    arrays = write_idx_set(tmp_path / "mnist", gz=False)
    write_idx_set(tmp_path / "mnist", gz=True)  # both present: the plain ones are mapped
    ds = load_dataset("mnist", tmp_path, mmap=True)
    assert isinstance(ds.x_train, np.memmap) and np.array_equal(ds.x_train[:, 0], arrays["x_train"])
    write_idx_set(tmp_path / "gz" / "mnist", gz=True)
    with pytest.raises(DataError, match="gunzip"):
        load_dataset("mnist", tmp_path / "gz", mmap=True)


def test_cli_export_then_stream_and_clear_errors(tmp_path, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "data", "--export", "digits", str(tmp_path / "dg"))
    assert code == 0 and "data=npy:" in out
    digits = load_dataset("digits")
    exported = read_npy(tmp_path / "dg")
    assert np.array_equal(exported.x_train, digits.x_train) and exported.classes == digits.classes
    code, _, err = run_cli(monkeypatch, capsys, "train", "data=digits", "data.stream=true", f"out_dir={tmp_path}")
    assert code == 2 and "memory-mapped" in err and "Traceback" not in err
    code, _, err = run_cli(monkeypatch, capsys, "train", f"data=npy:{tmp_path}/none", "data.stream=true")
    assert code == 2 and "not found" in err
    code, _, err = run_cli(monkeypatch, capsys, "train", "data.chunk_rows=0")
    assert code == 2 and "data.chunk_rows" in err
    (tmp_path / "a_file").write_text("")
    code, _, err = run_cli(monkeypatch, capsys, "data", "--export", "digits", str(tmp_path / "a_file" / "dg"))
    assert code == 2 and "cannot write" in err and "Traceback" not in err


@pytest.mark.parametrize("text,match", [("{not json", "not valid JSON"), ("[]", "non-empty list")])
def test_bad_class_names_file_is_a_data_error(npy_dir, text, match):
    (npy_dir / "classes.json").write_text(text)
    with pytest.raises(DataError, match=match):
        read_npy(npy_dir)


@pytest.mark.parametrize("study", study_names())
def test_studies_refuse_stream(tmp_path, study):
    with pytest.raises(ConfigError, match="data.stream"):
        run_study(study, overrides=["data.stream=true", f"out_dir={tmp_path}"])


def test_npy_layouts(tmp_path, blobs):
    """N×H×W images are mapped as (N, 1, H, W); channels-last ones load in memory but cannot be mapped."""
    folder = save_npy(blobs, tmp_path / "hw")
    np.save(folder / "x_train.npy", blobs.x_train[:, 0])
    np.save(folder / "y_train.npy", blobs.y_train[:, None].astype(np.int32))  # Keras-style (N, 1) labels
    ds = read_npy(folder)
    assert isinstance(ds.x_train, np.memmap) and np.array_equal(ds.x_train, blobs.x_train)
    assert ds.y_train.dtype == np.int64 and np.array_equal(ds.y_train, blobs.y_train)
    rgb = np.repeat(blobs.x_train.transpose(0, 2, 3, 1), 3, axis=3)  # N×H×W×3
    np.save(folder / "x_train.npy", rgb)
    np.save(folder / "x_test.npy", np.repeat(blobs.x_test.transpose(0, 2, 3, 1), 3, axis=3))
    assert read_npy(folder, mmap=False).x_train.shape == (len(rgb), 3, 8, 8)
    with pytest.raises(DataError, match="channels first"):
        read_npy(folder)
