"""aelab.report: every plot returns a Figure that saves as a PNG; pages read only a run folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aelab.errors import CheckpointError
from aelab.report import (
    caption,
    format_value,
    image_grid,
    loss_curves,
    metric_vs,
    recon_grid,
    save,
    save_gif,
    scatter_2d,
    strip,
    to_uint8_grid,
    write_index,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HISTORY = [
    {"epoch": 1, "train.loss": 0.9, "train.recon": 0.8, "val.loss": 1.0, "val.mse": 0.05, "lr": 1e-3, "time": 0.1},
    {"epoch": 2, "train.loss": 0.5, "train.recon": 0.4, "val.loss": 0.6, "val.mse": None, "lr": 2e-3, "time": 0.1},
    {"epoch": 3, "train.loss": 0.3, "train.recon": "nan?", "val.loss": 0.4, "val.mse": 0.02, "lr": 1e-3},
]


def _images(n: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, channels, 8, 8), dtype=np.float32)  # (N, C, H, W)


@pytest.fixture(autouse=True)
def full_figures(monkeypatch):
    """The figures as users get them: conftest makes every other test write drafts."""
    monkeypatch.delenv("AELAB_FIGURES", raising=False)


def _saves_png(fig, path: Path) -> None:
    from matplotlib.figure import Figure  # here: collection in every test worker never imports matplotlib
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    assert isinstance(fig, Figure)
    width, height = fig.get_size_inches()
    out = save(fig, path)
    assert out == path and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000
    assert np.allclose(Image.open(path).size, (width * 100, height * 100), atol=1)  # 100 dpi
    assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)


def test_draft_figures_skip_the_layout_engine_and_write_30_dpi(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    monkeypatch.setenv("AELAB_FIGURES", "draft")
    fig = loss_curves(HISTORY)
    width, height = fig.get_size_inches()
    save(fig, tmp_path / "draft.png")
    assert np.allclose(Image.open(tmp_path / "draft.png").size, (width * 30, height * 30), atol=1)
    assert not isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)


def test_a_mistyped_figure_mode_is_one_line_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    from test_cli import run_cli

    monkeypatch.setenv("AELAB_FIGURES", "drafts")
    code, _, err = run_cli(monkeypatch, capsys, "train", f"out_dir={tmp_path}")
    assert code == 2 and "AELAB_FIGURES='drafts'" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before any run folder was made


# ----------------------------------------------------------------------------- plots


@pytest.mark.parametrize("channels", [1, 3])
def test_image_figures_save_png(tmp_path: Path, channels: int) -> None:
    x = _images(12, channels)
    recon = np.clip(x + 0.1, 0, 1)
    _saves_png(recon_grid(x, recon, n=6), tmp_path / "nested" / "recon_grid.png")
    _saves_png(image_grid(x, nrow=4, title="Samples"), tmp_path / "grid.png")
    _saves_png(image_grid(x * 7 - 3, nrow=5, normalize=True), tmp_path / "filters.png")
    _saves_png(strip(x[:7], title="Interpolation"), tmp_path / "strip.png")


def test_to_uint8_grid_layout() -> None:
    grid = to_uint8_grid(_images(5, 3), nrow=3, pad=1)  # 2 rows of 3 cells, the last one blank
    assert grid.shape == (2 * 9 + 1, 3 * 9 + 1, 3) and grid.dtype == np.uint8
    assert (grid[10:18, 19:27] == 255).all()  # the missing sixth image is white
    assert to_uint8_grid(np.zeros((1, 1, 4, 4)), nrow=1, pad=0).max() == 0


def test_image_checks() -> None:
    with pytest.raises(ValueError, match="C = 1 or 3"):
        image_grid(np.zeros((2, 2, 8, 8)), nrow=2)
    with pytest.raises(ValueError, match="differ in shape"):
        recon_grid(_images(3, 1), _images(3, 3))


def test_loss_curves(tmp_path: Path) -> None:
    fig = loss_curves(HISTORY)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["loss", "recon", "mse"]  # lr and time are not terms; total loss first
    assert fig.axes[0].get_yscale() == "log"
    _saves_png(fig, tmp_path / "loss_curves.png")
    _saves_png(loss_curves([]), tmp_path / "empty.png")  # nothing to plot still renders
    negative = [{"epoch": 1, "train.elbo": -3.0}, {"epoch": 2, "train.elbo": -2.0}]
    assert loss_curves(negative).axes[0].get_yscale() == "linear"


def test_scatter_and_metric_vs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    points, labels = rng.normal(size=(60, 2)), rng.integers(0, 3, size=60)
    fig = scatter_2d(points, labels, "Codes (PCA)", class_names=["zero", "one", "two"])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["zero", "one", "two"]
    _saves_png(fig, tmp_path / "codes_pca.png")
    _saves_png(scatter_2d(points, None, "Unlabelled"), tmp_path / "plain.png")
    x = [1, 10, 100]
    ys = {"ae": (np.array([0.5, 0.7, 0.9]), np.array([0.05, 0.04, 0.01])), "pca": ([0.4, 0.6, 0.8], None)}
    _saves_png(metric_vs(x, ys, "labels per class", "accuracy", "Few labels", logx=True), tmp_path / "mv.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_save_gif(tmp_path: Path, channels: int) -> None:
    frames = list(_images(5, channels, seed=channels))
    path = save_gif(frames, tmp_path / "anim" / "interpolation.gif", duration_ms=50)
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        assert min(gif.size) >= 128  # 8x8 frames upscaled to be visible


# ----------------------------------------------------------------------------- pages


def _make_run(root: Path, name: str, metrics: dict) -> Path:
    run = root / name
    (run / "figures").mkdir(parents=True)
    config = {
        "name": name,
        "seed": 3,
        "model": {"name": "conv", "code_dim": 16, "note": "<script>alert(1)</script>"},
        "data": {"name": "digits", "val_fraction": 0.1},
    }
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HISTORY) + '{"epoch": 4, "tr')
    for stem in ("loss_curves", "recon_grid"):  # the page embeds bytes; drawing them is tested above
        Image.new("L", (16, 16), 128).save(run / "figures" / f"{stem}.png")
    return run


METRICS = {
    "test.mse": 0.0123456,
    "probe.accuracy": {"mean": 0.91234, "std": 0.0123, "ci95": [0.9, 0.925], "n": 5},
    "knn": {"acc": 0.8, "k": 5},
    "meta": {"seed": 3, "aelab_version": "0.1.0", "git_commit": "0123456789abcdef0123", "device": "cpu"},
}


def test_write_report(tmp_path: Path) -> None:
    run = _make_run(tmp_path, "conv-digits", METRICS)
    page = write_report(run).read_text(encoding="utf-8")
    assert (run / "report.html").is_file() and not list(run.glob(".*tmp"))
    for text in ("test.mse", "0.01235", "probe.accuracy", "0.9123 ± 0.0123 [0.9, 0.925] (n=5)", "knn.acc"):
        assert text in page
    assert page.count('src="data:image/png;base64,') == 2
    assert page.index("Recon grid") < page.index("Loss curves")  # preferred order, not alphabetical
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "model.code_dim" in page and "seed 3" in page and "aelab 0.1.0" in page and "0123456789ab" in page
    assert "3 epochs (1 unreadable lines skipped)" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_report_of_a_bare_run(tmp_path: Path) -> None:
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text('{"model": {"name": "dense"}}')
    page = write_report(tmp_path / "bare").read_text(encoding="utf-8")
    assert "no history" in page and "no metrics" in page and "no figures" in page


def test_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not an aelab run folder"):
        write_report(tmp_path / "missing")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        write_report(tmp_path)  # exists, but no config.json


def test_write_index(tmp_path: Path) -> None:
    a = _make_run(tmp_path / "runs", "a", METRICS)
    b = _make_run(tmp_path / "runs", "b", {"test.mse": 0.5, "test.bce": 0.25})
    out = write_index([a, b], tmp_path / "index.html")
    page = out.read_text(encoding="utf-8")
    assert 'href="runs/a/report.html"' in page and 'href="runs/b/report.html"' in page
    assert (a / "report.html").is_file() and (b / "report.html").is_file()
    for column in ("test.mse", "probe.accuracy", "test.bce", "conv", "digits"):
        assert column in page
    assert "knn" not in page  # a nested group is not a top-level numeric metric


def test_formatting() -> None:
    assert caption("figures/recon_grid.png") == "Recon grid"
    assert caption("codes_tsne.png") == "Codes t-SNE"
    assert format_value(123456.789) == "1.235e+05" and format_value(30) == "30"
    assert format_value({"mean": 0.5, "ci95": [0.4, 0.6]}) == "0.5 [0.4, 0.6]"
    assert format_value(True) == "true" and format_value(None) == "—"


def test_the_2d_view_of_codes_is_their_pca():
    """The run report's code scatter: the same two axes as scikit-learn's PCA (up to each axis's sign)."""
    from sklearn.decomposition import PCA

    from aelab.analysis import pca_2d

    rng = np.random.default_rng(0)
    codes = rng.normal(size=(200, 6)) * [5.0, 3.0, 1.0, 0.5, 0.2, 0.1] + 7.0  # distinct variances
    ours, ref = pca_2d(codes.astype(np.float32)), PCA(2).fit_transform(codes)
    signs = np.sign((ours * ref).sum(0))
    np.testing.assert_allclose(ours * signs, ref, atol=1e-4)
