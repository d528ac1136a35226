"""The explorer without a browser: the latent-space math, the cache in the run folder, the Bokeh
document's callbacks, the CLI's errors and a clean Ctrl-C. The browser test is test_explore_browser.py.

    .venv/bin/python -m pytest tests/test_explore.py -q
"""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from conftest import require  # noqa: E402

require("bokeh", extra="explore")

from aelab.errors import ConfigError  # noqa: E402
from aelab.explore.space import CACHE, Space, directions, load_space, slerp  # noqa: E402
from aelab.models import build_model, model_names  # noqa: E402
from aelab.runs import train  # noqa: E402

AELAB = [sys.executable, "-m", "aelab"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny finished runs on the blobs: a conv AE and a VAE (one epoch each, seconds)."""
    from conftest import write_blobs_npz

    root = tmp_path_factory.mktemp("explore")
    fast = [f"data={write_blobs_npz(root)}", f"out_dir={root}", "train.epochs=1", "eval.tsne=false", "train.progress=off"]
    return {m: train(overrides=[*fast, f"model={m}", f"name={m}", *(["model.arch=dense"] if m == "vae" else [])])
            for m in ("conv", "vae")}


def toy_space(name: str = "conv", n: int = 40) -> Space:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)
    images[: n // 2] //= 8  # the first half light, the second heavy
    model = build_model(name, (1, 8, 8)).eval()
    codes = rng.normal(size=(n, model.cfg.latent_dim)).astype(np.float32)
    return Space(model, images, np.arange(n) % 4, ["a", "b", "c", "d"], codes, {"pca": codes[:, :2]})


def test_morph_runs_from_a_to_b_and_the_vae_also_slerps():
    s = toy_space("conv")
    paths = s.morph(3, 7, 6)
    assert list(paths) == ["linear"] and paths["linear"].shape == (6, s.codes.shape[1])
    np.testing.assert_allclose(paths["linear"][[0, -1]], s.codes[[3, 7]], atol=1e-6)
    np.testing.assert_allclose(np.diff(paths["linear"], axis=0), np.diff(paths["linear"], axis=0)[:1].repeat(5, 0),
                               atol=1e-5)  # equal steps along one line
    v = toy_space("vae")
    paths = v.morph(3, 7, 9)
    assert list(paths) == ["linear", "spherical"]
    np.testing.assert_allclose(paths["spherical"][[0, -1]], v.codes[[3, 7]], atol=1e-5)
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])  # a quarter circle: the norm stays 1 all the way
    mid = slerp(a, b, np.linspace(0, 1, 5)[:, None])
    np.testing.assert_allclose(np.linalg.norm(mid, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(mid[2], [np.sqrt(0.5)] * 2, atol=1e-6)


def test_sliders_and_attribute_vectors_edit_the_code():
    s = toy_space("conv")  # 30-d codes: wider than MAX_SLIDERS, so principal directions
    assert s.basis.shape == (12, 30)
    np.testing.assert_allclose(s.basis @ s.basis.T, np.eye(12), atol=1e-5)
    np.testing.assert_allclose(s.edit(5, np.zeros(12)), s.codes[5])
    moved = s.edit(5, np.eye(12)[2] * 1.5)
    np.testing.assert_allclose(moved - s.codes[5], 1.5 * s.scale[2] * s.basis[2], atol=1e-5)
    ink = s.attribute("ink")  # heaviest 10% minus lightest 10%: rows of the second half minus the first
    ink_sum = s.images.reshape(40, -1).sum(1)
    order = np.argsort(ink_sum, kind="stable")
    np.testing.assert_allclose(ink, s.codes[order[-4:]].mean(0) - s.codes[order[:4]].mean(0), atol=1e-6)
    assert set(order[-4:]) <= set(range(20, 40)) and set(order[:4]) <= set(range(20))
    cls = s.attribute("class", 1, 3)
    np.testing.assert_allclose(cls, s.codes[s.labels == 3].mean(0) - s.codes[s.labels == 1].mean(0), atol=1e-6)
    np.testing.assert_allclose(s.edit(5, np.zeros(12), cls, 0.5), s.codes[5] + 0.5 * cls, atol=1e-6)
    narrow = toy_space("vae")  # 16-d > 12 too; a 4-d linear AE gets one slider per dimension
    lin = Space(build_model("linear", (1, 8, 8)), narrow.images, narrow.labels, [], narrow.codes[:, :4], {})
    np.testing.assert_allclose(lin.basis, np.eye(4))
    np.testing.assert_allclose(lin.scale, narrow.codes[:, :4].std(0) + 1e-6, rtol=1e-5)


def test_decode_gives_the_models_images():
    s = toy_space("conv")
    img = s.decode(s.codes[:2])
    assert img.dtype == np.uint8 and img.shape == (2, 1, 8, 8)
    want = (torch.sigmoid(s.model.decode(torch.from_numpy(s.codes[:2]))) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(img, want)


def test_codes_and_maps_are_cached_in_the_run_folder(runs):
    path = runs["conv"]
    space, computed = load_space(path)
    assert computed and (path / CACHE).is_file() and len(space.codes) == 80
    from aelab.runs import load_run

    run = load_run(path)
    x = torch.from_numpy(space.images).float() / 255
    np.testing.assert_allclose(space.codes, run.model.encode(x).detach().numpy(), atol=1e-5)
    before = (path / CACHE).stat().st_mtime_ns
    again, computed = load_space(path)
    assert not computed and (path / CACHE).stat().st_mtime_ns == before
    np.testing.assert_array_equal(again.maps["pca"], space.maps["pca"])
    fewer, computed = load_space(path, points=50)  # another key: computed afresh
    assert computed and len(fewer.codes) == 50
    both, computed = load_space(path, points=50, maps=["pca", "tsne"])  # a map asked for later is added
    assert computed and list(both.maps) == ["pca", "tsne"] and both.maps["tsne"].shape == (50, 2)
    np.testing.assert_array_equal(both.maps["pca"], fewer.maps["pca"])
    assert not load_space(path, points=50, maps=["tsne"])[1]


def test_document_callbacks_decode_on_the_server(runs):
    from bokeh.document import Document

    from aelab.explore.app import Explorer, make_document

    space, _ = load_space(runs["vae"])
    doc = Document()
    make_document(doc, space, "vae")
    assert doc.select_one({"name": "slider0"}) is not None and doc.select_one({"name": "note"}) is None
    ex = Explorer(space, "vae")  # the same widgets, driven directly
    doc2 = Document()
    doc2.add_root(ex.map_figure())
    doc2.add_root(ex.controls())
    ex.source.selected.indices = [4]
    ex.source.selected.indices = [9]
    assert 'data-from="4" data-to="9"' in ex.morph_div.text
    assert ex.morph_div.text.count('data-role="morph"') == 2 * 10  # linear and spherical, 10 steps each
    assert ex.morph_div.text.count('data-path="spherical"') == 10
    ex.steps.value = 5
    assert ex.morph_div.text.count('data-role="morph"') == 2 * 5
    before = ex.edited_div.text
    ex.sliders[0].value = 2.5
    assert ex.edited_div.text != before
    ex.attr_kind.value, ex.strength.value = "class", 1.0
    assert ex.edited_div.text != before


def test_a_model_without_a_decoder_gets_the_map_only(runs, tmp_path):
    from bokeh.document import Document

    from aelab.explore.app import make_document

    s = toy_space("adversarial")
    s.note = "adversarial has no decoder of its own: the map only"
    assert not s.decodes
    doc = Document()
    make_document(doc, s, "adv")
    assert doc.select_one({"name": "map"}) is not None and doc.select_one({"name": "slider0"}) is None
    assert "map only" in doc.select_one({"name": "note"}).text


@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_explores(name):
    """A model with a decoder gets morphs and live edits, one without the map only (untrained models: codes
    drawn with a spread wide enough that a slider step changes the decoded pixels)."""
    from bokeh.document import Document

    from aelab.explore.app import Explorer

    s = toy_space(name)
    width = s.model.encode(torch.from_numpy(s.images[:2]).float() / 255).shape[1]  # the representation's
    s.codes = np.random.default_rng(1).normal(0, 2, (len(s.images), width)).astype(np.float32)
    s.basis, s.scale = directions(s.codes)
    ex = Explorer(s, name)
    doc = Document()
    doc.add_root(ex.map_figure())
    assert s.decodes == (name != "adversarial")
    if not s.decodes:
        return
    doc.add_root(ex.controls())
    ex.source.selected.indices = [1]
    ex.source.selected.indices = [22]
    assert ex.morph_div.text.count('data-role="morph"') == 10 * (2 if name == "vae" else 1)
    before = ex.edited_div.text
    ex.sliders[0].value = 3.0
    assert ex.edited_div.text != before, name


def test_cli_bad_input_is_one_line_and_exit_2(runs, tmp_path, monkeypatch, capsys):
    from test_cli import run_cli

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((runs["conv"] / "config.json").read_text())
    for folder, fragment in [(tmp_path / "nothing", "not an aelab run folder"), (unfinished, "has no weights")]:
        code, _, err = run_cli(monkeypatch, capsys, "explore", str(folder))  # refused before any server starts
        assert code == 2 and fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    import aelab.explore.server
    import aelab.explore.space

    def never(*a, **k):
        raise AssertionError("the port is checked before the codes are computed and before any server")

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with monkeypatch.context() as m:
            m.setattr(aelab.explore.space, "load_space", never)
            m.setattr(aelab.explore.server, "serve", never)
            code, _, err = run_cli(monkeypatch, capsys, "explore", str(runs["conv"]), "--port", str(port))
        assert code == 2 and f"port {port} on 127.0.0.1 is busy" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is busy"):  # taken after the check
            aelab.explore.server.make_server(toy_space(), "t", port)


def test_widget_values_from_a_session_are_clamped(runs):
    """A browser session can send any value: the morph's steps, the sliders and the strength are held
    to their ranges (steps=500 would decode 1,000 images per move), and values not offered are ignored."""
    from bokeh.document import Document

    from aelab.explore.app import Explorer

    space, _ = load_space(runs["vae"])
    ex = Explorer(space, "vae")
    doc = Document()
    doc.add_root(ex.map_figure())
    doc.add_root(ex.controls())
    ex.source.selected.indices = [4]
    ex.source.selected.indices = [9]
    for sent, shown in ((500, 16), (-7, 3), (float("nan"), 10), (1e300, 16)):
        ex.steps.value = sent
        assert ex.morph_div.text.count('data-role="morph"') == 2 * shown, sent  # linear and spherical
    ex.sliders[0].value = 3.0
    at_end = ex.edited_div.text
    ex.sliders[0].value = 1e9
    assert ex.edited_div.text == at_end  # 1e9 std is the slider's end, 3 std
    ex.strength.value = float("inf")
    ex.strength.value = 3.0
    at_end = ex.edited_div.text
    ex.strength.value = -1e12
    ex.strength.value = 1e12
    assert ex.edited_div.text == at_end
    ex.attr_kind.value, ex.class_a.value = "class", "no such class"
    ex.source.selected.indices = [10**9]  # no such point: nothing changes, no error
    assert 'data-from="4" data-to="9"' in ex.morph_div.text


def test_serves_offline_answers_only_its_own_host_names_and_stops_on_ctrl_c(runs, monkeypatch, capsys):
    """One real server (started with SIGINT ignored, as `aelab explore ... &` does): BokehJS comes from the
    wheel, not a CDN. DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 sends
    Host: evil.example:PORT; every route (page, images, BokehJS) answers 403 to it, while 127.0.0.1,
    localhost and --allow-host names work. Ctrl-C still stops it cleanly."""
    import urllib.error

    from test_cli import run_cli

    ignore = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    proc = subprocess.Popen(AELAB + ["explore", str(runs["conv"]), "--port", "0", "--allow-host", "MyBox.test"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore)
    try:
        url = None
        for line in proc.stdout:  # the URL line comes once the server listens
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            if found:
                url, port = found.group(0), int(found.group(1))
                break
        assert url, proc.stderr.read()
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        scripts = re.findall(r'<script[^>]*src="([^"]+)"', page)
        assert scripts and all(s.startswith("/static/") for s in scripts), scripts  # BokehJS from the wheel
        assert "cdn." not in page
        for s in scripts:
            assert urllib.request.urlopen(url.rstrip("/") + s, timeout=30).status == 200
        png = urllib.request.urlopen(url + "img/3.png", timeout=30).read()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"

        def status(path: str, host: str) -> int:
            req = urllib.request.Request(url.rstrip("/") + path, headers={"Host": host})
            try:
                return urllib.request.urlopen(req, timeout=30).status
            except urllib.error.HTTPError as e:
                return e.code

        for path in ("/", "/img/3.png", "/static/js/bokeh.min.js"):
            assert status(path, f"127.0.0.1:{port}") == 200, path
            assert status(path, f"localhost:{port}") == 200, path
            assert status(path, f"mybox.test:{port}") == 200, path
            assert status(path, f"evil.example:{port}") == 403, path
            assert status(path, f"localhost:{port + 1}") == 403, path  # another port: another origin
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0 and "stopped" in out and "Traceback" not in err, err
    import aelab.explore.server

    def never(*a, **k):  # the bad name must stop it before any server starts
        raise AssertionError("a server started")

    monkeypatch.setattr(aelab.explore.server, "serve", never)
    code, _, err = run_cli(monkeypatch, capsys, "explore", str(runs["conv"]), "--allow-host", "a/b")
    assert code == 2 and "--allow-host" in err and len(err.strip().splitlines()) == 1
